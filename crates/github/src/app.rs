//! The App's own settings, as `berth doctor` and `berth setup` ask GitHub
//! for them: the App's key, its description, installations and webhook
//! configuration ([`AppClient`], with the App's JWT), and the manifest
//! flow's code conversion ([`ManifestFlow`], no credentials).
//!
//! Each call is made once, without the daemon's retries: doctor reports what
//! GitHub answered, and a manifest code works only once anyway. Answers come
//! back as the few typed fields the commands read; what the answers mean
//! (which permissions are enough, what a failure asks of the operator) is
//! theirs to say, not this module's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

use core_types::Secret;
use core_types::env_names as names;
use octocrab::Octocrab;
use octocrab::models::AppId;
use serde_json::Value;

use crate::{Delivery, GitHubError};

/// Whether `pem` is an RSA private key the App's JWT can be signed with.
///
/// # Errors
/// [`GitHubError::PrivateKey`] with the parser's reason.
pub fn check_private_key(pem: &[u8]) -> Result<(), GitHubError> {
    octocrab::EncodingKey::from_rsa_pem(pem)
        .map(drop)
        .map_err(|err| GitHubError::PrivateKey { reason: err.to_string() })
}

/// Whether an account is a person's or an organisation's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    /// A personal account (or anything GitHub does not call an organisation).
    User,
    /// An organisation.
    Organization,
}

/// A GitHub account: an App's owner, or where an App is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Its login (empty when GitHub did not say).
    pub login: String,
    /// A person's or an organisation's.
    pub kind: AccountKind,
}

impl Account {
    fn from_json(value: &Value) -> Self {
        Self {
            login: value["login"].as_str().unwrap_or_default().to_owned(),
            kind: if value["type"] == "Organization" { AccountKind::Organization } else { AccountKind::User },
        }
    }
}

/// The App as `GET /app` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppInfo {
    /// The App id.
    pub id: u64,
    /// Its slug (its bot user is `<slug>[bot]`).
    pub slug: String,
    /// Its name.
    pub name: String,
    /// The account that owns it.
    pub owner: Account,
    /// Its public page, when GitHub gave one.
    pub html_url: Option<String>,
    /// Its permissions, by name: `read`, `write` or `admin`.
    pub permissions: BTreeMap<String, String>,
    /// The webhook events it subscribes to.
    pub events: Vec<String>,
}

impl AppInfo {
    /// The App from GitHub's JSON; `None` without an id or a slug.
    pub fn from_json(value: &Value) -> Option<Self> {
        let slug = value["slug"].as_str().filter(|slug| !slug.is_empty())?.to_owned();
        Some(Self {
            id: value["id"].as_u64()?,
            name: value["name"].as_str().map_or_else(|| slug.clone(), str::to_owned),
            slug,
            owner: Account::from_json(&value["owner"]),
            html_url: value["html_url"].as_str().map(str::to_owned),
            permissions: value["permissions"]
                .as_object()
                .map(|permissions| {
                    permissions
                        .iter()
                        .filter_map(|(name, level)| Some((name.clone(), level.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default(),
            events: value["events"]
                .as_array()
                .map(|events| events.iter().filter_map(|event| event.as_str().map(str::to_owned)).collect())
                .unwrap_or_default(),
        })
    }
}

/// Which repositories an installation covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepositorySelection {
    /// Every repository of the account.
    All,
    /// The ones chosen on the installation.
    Selected,
}

/// One installation of the App, as `GET /app/installations` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    /// The installation id.
    pub id: u64,
    /// The account it is installed on.
    pub account: Account,
    /// Which of the account's repositories it covers.
    pub repository_selection: RepositorySelection,
    /// Whether it is suspended (GitHub sends it nothing then).
    pub suspended: bool,
}

impl Installation {
    /// The installation from GitHub's JSON; `None` without an id.
    pub fn from_json(value: &Value) -> Option<Self> {
        Some(Self {
            id: value["id"].as_u64()?,
            account: Account::from_json(&value["account"]),
            repository_selection: if value["repository_selection"] == "all" {
                RepositorySelection::All
            } else {
                RepositorySelection::Selected
            },
            suspended: !value["suspended_at"].is_null(),
        })
    }
}

/// The App's webhook settings, as `GET /app/hook/config` gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookConfig {
    /// Where GitHub delivers (empty when unset).
    pub url: String,
    /// `json` or `form`, when GitHub said.
    pub content_type: Option<String>,
    /// Whether GitHub skips TLS verification when delivering.
    pub insecure_ssl: bool,
}

impl HookConfig {
    /// The settings from GitHub's JSON.
    pub fn from_json(value: &Value) -> Self {
        Self {
            url: value["url"].as_str().unwrap_or_default().to_owned(),
            content_type: value["content_type"].as_str().map(str::to_owned),
            insecure_ssl: value["insecure_ssl"] == "1",
        }
    }
}

/// The App the manifest flow created, from the code conversion. The key and
/// the webhook secret are [`Secret`]s: `Debug` prints neither.
#[derive(Debug, Clone)]
pub struct CreatedApp {
    /// The App id.
    pub id: u64,
    /// Its slug.
    pub slug: String,
    /// Its name (the slug when GitHub gave none).
    pub name: String,
    /// The login of the account that owns it (empty when GitHub did not say).
    pub owner: String,
    /// Its public page, when GitHub gave an http(s) one, without a trailing `/`.
    pub html_url: Option<String>,
    /// Its private key, checked to be a usable RSA key.
    pub pem: Secret,
    /// Its webhook secret, when GitHub gave one.
    pub webhook_secret: Option<Secret>,
}

impl CreatedApp {
    /// The App from the conversion's JSON, its key checked.
    ///
    /// # Errors
    /// What is missing or unusable, as a sentence fragment.
    pub fn from_json(value: &Value) -> Result<Self, String> {
        let id = value["id"].as_u64().filter(|id| *id > 0).ok_or("the answer has no App id")?;
        let slug = value["slug"].as_str().filter(|slug| !slug.is_empty()).ok_or("the answer has no slug")?;
        let pem = value["pem"].as_str().ok_or("the answer has no private key")?;
        if check_private_key(pem.as_bytes()).is_err() {
            return Err("the private key in the answer is not a usable RSA key".to_owned());
        }
        Ok(Self {
            id,
            slug: slug.to_owned(),
            name: value["name"].as_str().unwrap_or(slug).to_owned(),
            owner: value["owner"]["login"].as_str().unwrap_or_default().to_owned(),
            html_url: value["html_url"]
                .as_str()
                .filter(|url| url.starts_with("https://") || url.starts_with("http://"))
                .map(|url| url.trim_end_matches('/').to_owned()),
            pem: Secret::new(pem),
            webhook_secret: value["webhook_secret"].as_str().map(Secret::new),
        })
    }
}

/// An error and its sources, on one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// Makes one call: an error status is [`GitHubError::Rejected`] whatever it
/// is, anything else (no answer, an answer that is not JSON)
/// [`GitHubError::Unavailable`] after one attempt.
async fn once(
    what: &str,
    call: impl Future<Output = Result<Value, octocrab::Error>>,
) -> Result<Value, GitHubError> {
    call.await.map_err(|err| match err {
        octocrab::Error::GitHub { source, .. } => GitHubError::Rejected {
            what: what.to_owned(),
            status: source.status_code.as_u16(),
            message: source.message,
        },
        other => GitHubError::Unavailable { what: what.to_owned(), attempts: 1, last: error_chain(&other) },
    })
}

/// An HTTP client for `api_url` with Berth's timeouts, as the App when
/// `app` is given; `not_started` says what a client that did not start means.
fn client(
    api_url: &str,
    app: Option<(AppId, octocrab::EncodingKey)>,
    not_started: &str,
) -> Result<Octocrab, GitHubError> {
    let mut builder = Octocrab::builder()
        .base_uri(api_url)
        .map_err(|err| GitHubError::Setup(format!("{} {api_url:?}: {err}", names::BERTH_GITHUB_API_URL)))?
        .set_connect_timeout(Some(Duration::from_secs(10)))
        .set_read_timeout(Some(Duration::from_secs(30)));
    if let Some((app_id, key)) = app {
        builder = builder.app(app_id, key);
    }
    builder.build().map_err(|err| GitHubError::Setup(format!("{not_started}: {err}")))
}

/// The App, authenticated with its JWT, as `berth doctor` asks it.
#[derive(Clone)]
pub struct AppClient {
    client: Octocrab,
}

impl std::fmt::Debug for AppClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppClient").finish_non_exhaustive()
    }
}

impl AppClient {
    /// The App `app_id` at `api_url`, signing with `private_key`.
    ///
    /// # Errors
    /// [`GitHubError::PrivateKey`] for an unusable key; [`GitHubError::Setup`]
    /// for an unusable URL or an HTTPS client that did not start.
    pub fn new(api_url: &str, app_id: u64, private_key: &Secret) -> Result<Self, GitHubError> {
        let key = octocrab::EncodingKey::from_rsa_pem(private_key.expose().as_bytes())
            .map_err(|err| GitHubError::PrivateKey { reason: err.to_string() })?;
        let client = client(api_url, Some((AppId(app_id), key)), "the GitHub client did not start")?;
        Ok(Self { client })
    }

    async fn get(&self, what: &str, route: &str, query: &[(&str, &str)]) -> Result<Value, GitHubError> {
        once(what, self.client.get::<Value, _, _>(route, Some(&query))).await
    }

    /// `GET /app`: the App as GitHub describes it.
    ///
    /// # Errors
    /// GitHub's answer, or none; [`GitHubError::Unexpected`] without an id or slug.
    pub async fn describe(&self) -> Result<AppInfo, GitHubError> {
        let what = "read the App's own description";
        let value = self.get(what, "/app", &[]).await?;
        AppInfo::from_json(&value).ok_or_else(|| GitHubError::Unexpected {
            what: what.to_owned(),
            detail: "no id or slug".to_owned(),
        })
    }

    /// `GET /app/installations`: the first hundred installations.
    ///
    /// # Errors
    /// GitHub's answer, or none.
    pub async fn installations(&self) -> Result<Vec<Installation>, GitHubError> {
        let value =
            self.get("list the App's installations", "/app/installations", &[("per_page", "100")]).await?;
        Ok(value
            .as_array()
            .map(|installations| installations.iter().filter_map(Installation::from_json).collect())
            .unwrap_or_default())
    }

    /// `GET /app/hook/config`: where and how GitHub delivers.
    ///
    /// # Errors
    /// GitHub's answer, or none.
    pub async fn hook_config(&self) -> Result<HookConfig, GitHubError> {
        let value = self.get("read the App's webhook settings", "/app/hook/config", &[]).await?;
        Ok(HookConfig::from_json(&value))
    }

    /// `GET /app/hook/deliveries`: the last `per_page` delivery attempts, newest first.
    ///
    /// # Errors
    /// GitHub's answer, or none.
    pub async fn deliveries(&self, per_page: u32) -> Result<Vec<Delivery>, GitHubError> {
        let per_page = per_page.to_string();
        let value = self
            .get("list the App's webhook deliveries", "/app/hook/deliveries", &[("per_page", &per_page)])
            .await?;
        Ok(value
            .as_array()
            .map(|deliveries| deliveries.iter().filter_map(Delivery::from_json).collect())
            .unwrap_or_default())
    }
}

/// The manifest flow's last step, which needs no credentials: trading the
/// one-time code GitHub hands back for the App it created.
#[derive(Clone)]
pub struct ManifestFlow {
    client: Octocrab,
}

impl std::fmt::Debug for ManifestFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestFlow").finish_non_exhaustive()
    }
}

impl ManifestFlow {
    /// The flow against the GitHub at `api_url`.
    ///
    /// # Errors
    /// [`GitHubError::Setup`] for an unusable URL or an HTTPS client that did not start.
    pub fn new(api_url: &str) -> Result<Self, GitHubError> {
        let client =
            client(api_url, None, "the HTTPS client did not start (the host needs CA certificates)")?;
        Ok(Self { client })
    }

    /// `POST /app-manifests/{code}/conversions`: the App, its key and its
    /// webhook secret. A code converts once.
    ///
    /// # Errors
    /// [`GitHubError::Rejected`] with GitHub's status, [`GitHubError::Unavailable`]
    /// without an answer, [`GitHubError::Unexpected`] naming what the answer lacks.
    pub async fn convert(&self, code: &str) -> Result<CreatedApp, GitHubError> {
        let what = "convert the manifest code";
        let route = format!("/app-manifests/{code}/conversions");
        let value = once(what, self.client.post::<_, Value>(&route, None::<&()>)).await?;
        CreatedApp::from_json(&value)
            .map_err(|detail| GitHubError::Unexpected { what: what.to_owned(), detail })
    }
}
