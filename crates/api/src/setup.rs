//! `berth setup`: from nothing to a working GitHub App in one step.
//!
//! It serves one page (on loopback by default) whose button posts the App
//! manifest, the one `berth app-manifest` prints plus a `redirect_url` back
//! here, to GitHub's manifest flow: for a personal account or an
//! organisation, on github.com or on the GitHub Enterprise host that
//! `BERTH_GITHUB_API_URL` names. GitHub creates the App and sends the browser
//! back with a one-time `code`, which Berth converts
//! (`POST /app-manifests/{code}/conversions`, no credentials needed) into the
//! App's id, private key and webhook secret. The key and the secret go into
//! files in the state directory, mode 0600, beside `berth.toml`, the
//! settings `berth serve --config` reads. The page then shows the App's
//! install link and the steps that are left, and `berth setup` ends.
//!
//! Only a browser that opened the address printed on the terminal may start
//! the flow: it carries a random key, kept in a cookie once the page is open
//! so that it leaves the address bar. Every page load makes a new `state` (32
//! random bytes) that the callback must bring back: compared in constant
//! time, good once, for [`STATE_TTL`]; a callback without a good one never
//! reaches GitHub. The App's key and webhook secret are never printed,
//! logged, shown on a page or put in an error.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use core_types::Secret;
use github::{GitHubError, ManifestFlow};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::AppManifestArgs;

/// How long the button of one page load works: GitHub's code itself is good
/// for an hour, and filling in GitHub's page takes a minute or two.
pub const STATE_TTL: Duration = Duration::from_secs(30 * 60);

/// States kept at once (one per page load); past it the oldest goes.
const MAX_STATES: usize = 64;

/// The cookie that holds the page's key once the printed address was opened.
pub const KEY_COOKIE: &str = "berth_setup";

const STYLE: &str = include_str!("setup.css");

/// The Claude Code worker image of the README ("Running a real agent").
pub const CLAUDE_IMAGE: &str = "berth-claude:latest";

/// The Claude Code command of the README ("Running a real agent").
pub const CLAUDE_COMMAND: &str =
    "claude -p --permission-mode acceptEdits --add-dir {work_dir} --output-format text";

/// The agent `berth.toml` is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    /// Claude Code in `berth-claude:latest`, its settings and key in the state directory.
    ClaudeCode,
    /// No agent settings: Berth's defaults, for the operator to change.
    None,
}

/// The settings of `berth setup`, validated.
#[derive(Debug, Clone)]
pub struct SetupConfig {
    /// Where people and GitHub reach Berth, without a trailing slash.
    pub public_url: String,
    /// The App's name, as proposed to GitHub.
    pub name: String,
    /// The organisation to create the App in; `None`: the personal account.
    pub org: Option<String>,
    /// Where the setup page listens.
    pub bind: SocketAddr,
    /// Where the files go (absolute).
    pub state_dir: PathBuf,
    /// The REST base URL, without a trailing slash.
    pub github_api_url: String,
    /// GitHub's web address, where the manifest is posted.
    pub github_web_url: String,
    /// The agent the config sets up.
    pub agent: Agent,
    /// Replace an earlier App's files.
    pub force: bool,
    /// How long one page load's state is good.
    pub state_ttl: Duration,
}

/// Whether `name` can be a GitHub account (user or organisation) login.
pub fn is_account_name(name: &str) -> bool {
    (1..=39).contains(&name.len())
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The files `berth setup` writes, all in the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// The state directory.
    pub dir: PathBuf,
    /// The App's private key (PEM).
    pub key: PathBuf,
    /// The App's webhook secret.
    pub webhook_secret: PathBuf,
    /// The settings `berth serve --config` reads.
    pub config: PathBuf,
    /// The agent's plain settings (`BERTH_WORKER_ENV_FILE`).
    pub agent_env: PathBuf,
    /// The agent's secrets (`BERTH_WORKER_SECRETS_FILE`).
    pub agent_secrets: PathBuf,
    /// The token of the dashboard, the status API and `berth cancel`
    /// (`BERTH_ADMIN_TOKEN_FILE`).
    pub admin_token: PathBuf,
}

impl Files {
    /// The files in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            key: dir.join("github-app-key.pem"),
            webhook_secret: dir.join("webhook-secret"),
            config: dir.join("berth.toml"),
            agent_env: dir.join("agent.env"),
            agent_secrets: dir.join("agent.secrets"),
            admin_token: dir.join("admin-token"),
        }
    }

    /// Every file setup writes when the agent is Claude Code, each mode 0600.
    pub fn all(&self) -> [&Path; 6] {
        [
            &self.key,
            &self.webhook_secret,
            &self.config,
            &self.agent_env,
            &self.agent_secrets,
            &self.admin_token,
        ]
        .map(PathBuf::as_path)
    }

    /// The files of an App set up before, those `--force` replaces. The
    /// agent's files and the admin token are never replaced: the secrets
    /// file holds the model's key, and people sign in with the token.
    pub fn existing(&self) -> Vec<&Path> {
        [&self.key, &self.webhook_secret, &self.config]
            .into_iter()
            .map(PathBuf::as_path)
            .filter(|path| path.symlink_metadata().is_ok())
            .collect()
    }
}

/// The App GitHub created, from the manifest conversion. Its key and
/// webhook secret are [`Secret`]s: `Debug` prints neither.
#[derive(Debug, Clone)]
pub struct CreatedApp {
    /// The App id.
    pub id: u64,
    /// Its slug (its bot user is `<slug>[bot]`).
    pub slug: String,
    /// Its name.
    pub name: String,
    /// The account that owns it.
    pub owner: String,
    /// Its public page.
    pub html_url: String,
    pem: Secret,
    webhook_secret: Secret,
}

impl CreatedApp {
    /// The App as GitHub's conversion describes it (its key already checked),
    /// once its webhook secret is one `berth serve` accepts; its page on the
    /// GitHub at `web` when the answer named none.
    fn from_conversion(app: github::CreatedApp, web: &str) -> Result<Self, String> {
        let webhook_secret = app
            .webhook_secret
            .filter(|secret| secret.expose().chars().count() >= crate::config::MIN_SECRET_CHARS)
            .ok_or("the answer has no webhook secret of at least 16 characters")?;
        let html_url = app.html_url.unwrap_or_else(|| format!("{web}/apps/{}", app.slug));
        Ok(Self {
            id: app.id,
            slug: app.slug,
            name: app.name,
            owner: app.owner,
            html_url: html_url.trim_end_matches('/').to_owned(),
            pem: app.pem,
            webhook_secret,
        })
    }

    /// Where the App is installed on repositories.
    pub fn install_url(&self) -> String {
        format!("{}/installations/new", self.html_url)
    }
}

/// The manifest the page posts: `berth app-manifest`'s, plus where GitHub
/// sends the browser back.
pub fn manifest(config: &SetupConfig, redirect_url: &str) -> Value {
    let mut manifest = crate::cli::app_manifest(&AppManifestArgs {
        url: config.public_url.clone(),
        name: config.name.clone(),
    });
    manifest["redirect_url"] = json!(redirect_url);
    manifest["description"] = json!("Berth: agent tasks from GitHub comments, in hardened containers.");
    manifest
}

/// Where the manifest is posted for `org` (`None`: the personal account).
pub fn manifest_form_url(web: &str, org: Option<&str>, state: &str) -> String {
    match org {
        Some(org) => format!("{web}/organizations/{org}/settings/apps/new?state={state}"),
        None => format!("{web}/settings/apps/new?state={state}"),
    }
}

/// `berth.toml`: what `berth serve --config` needs for the App (and the agent).
pub fn config_toml(config: &SetupConfig, files: &Files, app: &CreatedApp) -> String {
    // A JSON string is a valid TOML basic string (the same escapes).
    let quote = |text: &str| serde_json::to_string(text).unwrap_or_default();
    let path = |path: &Path| quote(&path.to_string_lossy());
    let mut text = format!(
        "# Written by `berth setup` for the GitHub App {name} ({html_url}).\n\
         # Read by `berth serve --config {config}` and `berth doctor --config {config}`;\n\
         # flags and BERTH_* variables win over it. The key and the webhook secret are\n\
         # in the files named here, mode 0600.\n\
         github_app_id = {id}\n\
         github_private_key_file = {key}\n\
         webhook_secret_file = {secret}\n\
         github_api_url = {api}\n\
         public_url = {public}\n\
         state_dir = {dir}\n\
         # The dashboard's sign-in, the status API and `berth cancel`.\n\
         admin_token_file = {admin}\n",
        name = quote(&app.name),
        html_url = app.html_url,
        config = files.config.display(),
        id = app.id,
        key = path(&files.key),
        secret = path(&files.webhook_secret),
        api = quote(&config.github_api_url),
        public = quote(&config.public_url),
        dir = path(&files.dir),
        admin = path(&files.admin_token),
    );
    if config.agent == Agent::ClaudeCode {
        let _ = write!(
            text,
            "\n# The agent: Claude Code (README, \"Running a real agent\"). Its key goes in\n\
             # {secrets}.\n\
             worker_image = {image}\n\
             agent_command = {command}\n\
             worker_env_file = {env}\n\
             worker_secrets_file = {secrets_path}\n\
             worker_memory = \"4g\"\n",
            secrets = files.agent_secrets.display(),
            image = quote(CLAUDE_IMAGE),
            command = quote(CLAUDE_COMMAND),
            env = path(&files.agent_env),
            secrets_path = path(&files.agent_secrets),
        );
    }
    text
}

const AGENT_ENV: &str = "\
# The agent's plain settings (BERTH_WORKER_ENV_FILE): one NAME=VALUE a line,
# read again for every task.
# Nothing but the Messages API: no telemetry, no update checks.
CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1
# A gateway or proxy in front of the API, and the model:
# ANTHROPIC_BASE_URL=https://llm-gateway.example.internal
# ANTHROPIC_MODEL=claude-sonnet-4-5
# HTTPS_PROXY=http://proxy.example.internal:3128
";

fn agent_secrets_text(path: &Path) -> String {
    format!(
        "# The agent's secrets (BERTH_WORKER_SECRETS_FILE): one NAME=VALUE a line, given\n\
         # to every worker and redacted from everything it prints. Keep it mode 0600.\n\
         # Write the model's key with (bash; not echoed, kept out of the history):\n\
         #   {}\n",
        key_command(path)
    )
}

/// The command that writes the model's key into the agent's secrets file.
pub fn key_command(path: &Path) -> String {
    format!(
        "read -rsp 'Anthropic API key: ' KEY && printf 'ANTHROPIC_API_KEY=%s\\n' \"$KEY\" > {} && unset KEY",
        path.display()
    )
}

/// One step left after setup: what to do, and the command or link for it.
struct Step {
    text: String,
    command: Option<String>,
    link: Option<String>,
}

fn next_steps(config: &SetupConfig, files: &Files, app: &CreatedApp) -> Vec<Step> {
    let mut steps = vec![Step {
        text: "Install the App on the repositories Berth should work on.".to_owned(),
        command: None,
        link: Some(app.install_url()),
    }];
    match config.agent {
        Agent::ClaudeCode => {
            steps.push(Step {
                text: "Build Berth's image and the Claude Code worker image, in a clone of Berth.".to_owned(),
                command: Some(format!(
                    "docker build -t berth:latest . && docker build -t {CLAUDE_IMAGE} deploy/agents/claude-code"
                )),
                link: None,
            });
            steps.push(Step {
                text: "Write the model's key into the agent's secrets file (bash; not echoed, kept out of the history).".to_owned(),
                command: Some(key_command(&files.agent_secrets)),
                link: None,
            });
        }
        Agent::None => steps.push(Step {
            text: format!(
                "Set up the agent (README, \"Running a real agent\"): its image, command, settings and secrets, in {}.",
                files.config.display()
            ),
            command: None,
            link: None,
        }),
    }
    steps.push(Step {
        text: format!(
            "Start Berth (behind the HTTPS address GitHub delivers to, {}), then check it: each FAIL says how to fix it.",
            config.public_url
        ),
        command: Some(format!(
            "nohup berth serve --config {config} >> {log} 2>&1 &\nberth doctor --config {config}",
            config = files.config.display(),
            log = files.dir.join("berth.log").display(),
        )),
        link: None,
    });
    steps.push(Step {
        text: "Comment `/berth review` on a pull request of a repository the App is installed on.".to_owned(),
        command: None,
        link: None,
    });
    steps
}

/// What the terminal shows once the App is set up. No secret.
pub fn done_message(config: &SetupConfig, files: &Files, app: &CreatedApp) -> String {
    let mut text = format!(
        "\nThe GitHub App {} (id {}, {}) is set up.\nWritten, mode 0600:\n",
        app.name, app.id, app.html_url
    );
    let mut written = vec![
        (&files.key, "the App's private key"),
        (&files.webhook_secret, "the webhook secret"),
        (&files.config, "the settings berth serve reads"),
        (&files.admin_token, "the dashboard's sign-in token (kept if it was there)"),
    ];
    if config.agent == Agent::ClaudeCode {
        written.push((&files.agent_env, "Claude Code's settings (kept if it was there)"));
        written.push((&files.agent_secrets, "the agent's key goes here (kept if it was there)"));
    }
    for (path, what) in written {
        let _ = writeln!(text, "  {:<40} {what}", path.display());
    }
    text.push_str("Next:\n");
    for (number, step) in next_steps(config, files, app).iter().enumerate() {
        let _ = writeln!(text, "  {}. {}", number + 1, step.text);
        if let Some(link) = &step.link {
            let _ = writeln!(text, "       {link}");
        }
        for line in step.command.iter().flat_map(|command| command.lines()) {
            let _ = writeln!(text, "       {line}");
        }
    }
    text
}

/// What the terminal shows while waiting for the browser. `url` carries the key.
pub fn waiting_message(config: &SetupConfig, url: &str, port: u16) -> String {
    format!(
        "Berth setup is waiting for your browser at\n\n  {url}\n\n\
         From your own machine, forward the port first and open the same address:\n  \
         ssh -N -L {port}:127.0.0.1:{port} <you>@<this server>\n\n\
         It creates a GitHub App on {web} for {public} (webhook {public}/webhook),\n\
         then writes its key, its webhook secret and berth.toml to {dir}.\n\
         Ctrl-C stops it.\n",
        public = config.public_url,
        web = config.github_web_url,
        dir = config.state_dir.display(),
    )
}

/// Refuses to go on when an earlier App's files are there, unless `force`.
///
/// # Errors
/// The files found, and what `--force` would do.
pub fn check_existing(files: &Files, force: bool) -> anyhow::Result<()> {
    let existing = files.existing();
    if existing.is_empty() || force {
        return Ok(());
    }
    let names: Vec<String> = existing.iter().map(|path| path.display().to_string()).collect();
    anyhow::bail!(
        "{} already holds a GitHub App's files ({}); `berth setup --force` replaces them \
         (the App they belong to stays on GitHub until you delete it there)",
        files.dir.display(),
        names.join(", ")
    )
}

/// Creates the state directory (mode 0700) if needed and checks that this
/// user can write to it.
///
/// # Errors
/// When it cannot be created or written.
pub fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).and_then(|()| {
        let probe = dir.join(format!(".berth-setup-{}", std::process::id()));
        std::fs::write(&probe, b"")?;
        std::fs::remove_file(&probe)
    })
    .with_context(|| {
        format!(
            "cannot write to {dir} (create it for this user: `sudo install -d -o \"$USER\" -m 0700 {dir}`, or pass --state-dir)",
            dir = dir.display()
        )
    })
}

/// Writes `content` to `path` with mode 0600, all or nothing: through a
/// temporary file, then renamed over `path` (`replace`) or linked to it,
/// which fails when `path` exists.
fn write_private(path: &Path, content: &[u8], replace: bool) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let written = (|| {
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
        // Whatever the umask: exactly owner read and write.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(content)?;
        file.sync_all()?;
        if replace { std::fs::rename(&temporary, path) } else { std::fs::hard_link(&temporary, path) }
    })();
    let _ = std::fs::remove_file(&temporary);
    written?;
    std::fs::File::open(dir)?.sync_all()
}

/// Writes the App's files (and the agent's, where missing).
fn write_files(config: &SetupConfig, files: &Files, app: &CreatedApp) -> Result<(), String> {
    let replace = config.force;
    let step = |path: &Path, content: &[u8], replace: bool| {
        write_private(path, content, replace).map_err(|err| format!("cannot write {}: {err}", path.display()))
    };
    step(&files.key, format!("{}\n", app.pem.expose().trim_end()).as_bytes(), replace)?;
    step(&files.webhook_secret, format!("{}\n", app.webhook_secret.expose()).as_bytes(), replace)?;
    step(&files.config, config_toml(config, files, app).as_bytes(), replace)?;
    if files.admin_token.symlink_metadata().is_err() {
        let token = random().map_err(|err| format!("cannot make the admin token: {err}"))?;
        step(&files.admin_token, format!("{token}\n").as_bytes(), false)?;
    }
    if config.agent == Agent::ClaudeCode {
        for (path, content) in [
            (&files.agent_env, AGENT_ENV.to_owned()),
            (&files.agent_secrets, agent_secrets_text(&files.agent_secrets)),
        ] {
            if path.symlink_metadata().is_err() {
                step(path, content.as_bytes(), false)?;
            }
        }
    }
    Ok(())
}

/// One page load's state, and when it was made.
#[derive(Debug, Default)]
struct States {
    issued: Vec<(String, Instant)>,
}

/// What a callback's state turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StateCheck {
    Valid,
    Expired,
    Unknown,
}

impl States {
    fn issue(&mut self, state: String, now: Instant) {
        if self.issued.len() >= MAX_STATES {
            self.issued.remove(0);
        }
        self.issued.push((state, now));
    }

    /// Takes `presented` out (a state is good once), comparing it with every
    /// state issued in constant time.
    fn take(&mut self, presented: &str, ttl: Duration, now: Instant) -> StateCheck {
        let mut found = None;
        for (index, (state, _)) in self.issued.iter().enumerate() {
            if bool::from(state.as_bytes().ct_eq(presented.as_bytes())) {
                found = Some(index);
            }
        }
        match found {
            None => StateCheck::Unknown,
            Some(index) => {
                let (_, issued) = self.issued.remove(index);
                if now.duration_since(issued) > ttl { StateCheck::Expired } else { StateCheck::Valid }
            }
        }
    }
}

/// The setup page's server: its key, the states it issued, and the App once made.
pub struct SetupServer {
    config: SetupConfig,
    files: Files,
    key: Secret,
    states: Mutex<States>,
    github: ManifestFlow,
    finished: tokio::sync::Mutex<Option<CreatedApp>>,
    done: CancellationToken,
}

impl std::fmt::Debug for SetupServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetupServer").field("config", &self.config).finish_non_exhaustive()
    }
}

/// A random value from the kernel (64 hex characters).
fn random() -> anyhow::Result<String> {
    crate::status::random_id().map_err(|_| anyhow::anyhow!("cannot read random bytes from /dev/urandom"))
}

impl SetupServer {
    /// A server for `config` whose page opens with `key`.
    ///
    /// # Errors
    /// When the GitHub client cannot be set up.
    pub fn new(config: SetupConfig, key: Secret) -> anyhow::Result<Arc<Self>> {
        let github = ManifestFlow::new(&config.github_api_url).map_err(|err| match err {
            // The setting and what was wrong with it, or the client that did not start.
            GitHubError::Setup(detail) => anyhow::anyhow!(detail),
            other => anyhow::Error::new(other),
        })?;
        Ok(Arc::new(Self {
            files: Files::in_dir(&config.state_dir),
            config,
            key,
            states: Mutex::default(),
            github,
            finished: tokio::sync::Mutex::new(None),
            done: CancellationToken::new(),
        }))
    }

    /// The page's routes.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new().route("/", get(page)).route("/callback", get(callback)).with_state(self)
    }

    /// Cancelled once the App is set up.
    pub fn done(&self) -> CancellationToken {
        self.done.clone()
    }

    /// The App, once set up.
    pub async fn finished(&self) -> Option<CreatedApp> {
        self.finished.lock().await.clone()
    }

    fn key_matches(&self, presented: &str) -> bool {
        bool::from(self.key.expose().as_bytes().ct_eq(presented.as_bytes()))
    }

    fn states(&self) -> std::sync::MutexGuard<'_, States> {
        self.states.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Trades GitHub's one-time code for the App.
    async fn convert(&self, code: &str) -> Result<CreatedApp, String> {
        let unusable = |reason: String| format!("GitHub's answer is not usable: {reason}");
        let app = self.github.convert(code).await.map_err(|err| match err {
            GitHubError::Rejected { status, message, .. } => format!("GitHub answered {status} ({message})"),
            GitHubError::Unavailable { last, .. } => {
                format!("cannot reach GitHub at {}: {last}", self.config.github_api_url)
            }
            GitHubError::Unexpected { detail, .. } => unusable(detail),
            other => other.to_string(),
        })?;
        CreatedApp::from_conversion(app, &self.config.github_web_url).map_err(unusable)
    }
}

/// The query of the page.
#[derive(Debug, Deserialize)]
struct PageQuery {
    key: Option<String>,
    org: Option<String>,
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

/// `http://<the host the browser used>/callback`: the browser comes back the
/// way it came (through an SSH tunnel, it is the tunnel's end).
fn redirect_url(headers: &HeaderMap, bind: SocketAddr) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .filter(|host| {
            !host.is_empty()
                && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        })
        .map_or_else(|| bind.to_string(), str::to_owned);
    format!("http://{host}/callback")
}

/// The origin (scheme, host, port) of `url`.
fn origin(url: &str) -> &str {
    let start = url.find("://").map_or(0, |at| at + 3);
    url[start..].find('/').map_or(url, |end| &url[..start + end])
}

/// A page with the setup's headers: a nonce for its one style element, no
/// script at all, forms only to itself and to GitHub, never framed, no referrer.
fn respond(server: &SetupServer, status: StatusCode, title: &str, body: Markup) -> Response {
    let Ok(nonce) = random() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "cannot read random bytes").into_response();
    };
    let policy = format!(
        "default-src 'none'; style-src 'nonce-{nonce}'; form-action 'self' {}; frame-ancestors 'none'; base-uri 'none'",
        origin(&server.config.github_web_url)
    );
    let document = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                // The page's own stylesheet, compiled in: nothing to escape.
                style nonce=(nonce) { (PreEscaped(STYLE)) }
            }
            body { main { (body) } }
        }
    };
    let mut response = (status, Html(document.into_string())).into_response();
    let headers = response.headers_mut();
    if let Ok(policy) = HeaderValue::from_str(&policy) {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn problem(server: &SetupServer, status: StatusCode, title: &str, text: &str) -> Response {
    respond(server, status, title, html! { h1 { (title) } p.error { (text) } })
}

/// `GET /`: the page with the button, for the holder of the printed key.
async fn page(
    State(server): State<Arc<SetupServer>>,
    headers: HeaderMap,
    Query(query): Query<PageQuery>,
) -> Response {
    if let Some(key) = &query.key {
        if !server.key_matches(key) {
            warn!("setup page opened with a wrong key");
            return problem(
                &server,
                StatusCode::FORBIDDEN,
                "Wrong setup address",
                "This key is not the one berth setup printed. Open the address it printed on its terminal.",
            );
        }
        // The key moves into a cookie, so that it leaves the address bar and the history.
        let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
        let cookie = format!("{KEY_COOKIE}={key}; Path=/; HttpOnly; SameSite=Strict");
        if let Ok(cookie) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return response;
    }
    if !cookie_value(&headers, KEY_COOKIE).is_some_and(|key| server.key_matches(key)) {
        return problem(
            &server,
            StatusCode::FORBIDDEN,
            "Open the address berth setup printed",
            "This page needs the key in the address that berth setup printed on its terminal.",
        );
    }
    if let Some(app) = server.finished().await {
        return done_page(&server, &app);
    }
    let (org, org_problem) = match query.org.as_deref().map(str::trim) {
        None => (server.config.org.clone(), None),
        Some("") => (None, None),
        Some(org) if is_account_name(org) => (Some(org.to_owned()), None),
        Some(org) => (server.config.org.clone(), Some(format!("{org:?} is not an organisation name."))),
    };
    let Ok(state) = random() else {
        return problem(
            &server,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Setup failed",
            "cannot read random bytes",
        );
    };
    server.states().issue(state.clone(), Instant::now());
    let manifest = manifest(&server.config, &redirect_url(&headers, server.config.bind));
    let action = manifest_form_url(&server.config.github_web_url, org.as_deref(), &state);
    let owner = match &org {
        Some(org) => html! { "the organisation " b { (org) } },
        None => html! { "your personal account" },
    };
    let permissions = manifest["default_permissions"]
        .as_object()
        .map(|permissions| {
            permissions
                .iter()
                .map(|(name, level)| format!("{name} ({})", level.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let events = manifest["default_events"]
        .as_array()
        .map(|events| events.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let body = html! {
        h1 { "Set up Berth" }
        p {
            "This creates Berth's GitHub App on " code { (server.config.github_web_url) } " for " (owner)
            ". GitHub shows you the App before creating it, then sends you back here; Berth writes the \
             App's key and webhook secret to " code { (server.files.dir.display()) } " (mode 0600)."
        }
        dl {
            dt { "App name" }
            dd { (server.config.name) " " span.muted { "(GitHub lets you change it)" } }
            dt { "Homepage" }
            dd { code { (server.config.public_url) } }
            dt { "Webhook" }
            dd { code { (manifest["hook_attributes"]["url"].as_str().unwrap_or_default()) } }
            dt { "Permissions" }
            dd { (permissions) }
            dt { "Events" }
            dd { (events) }
        }
        form method="post" action=(action) id="create-form" {
            input type="hidden" name="manifest" value=(manifest.to_string());
            button type="submit" class="primary" id="create" { "Create the GitHub App" }
        }
        p.muted {
            "The button works once, for " (server.config.state_ttl.as_secs() / 60)
            " minutes; reload the page for a new one."
        }
        @if let Some(text) = &org_problem {
            p.error { (text) }
        }
        h2 { "Owner" }
        form method="get" action="/" id="owner-form" {
            label for="org" { "Organisation" }
            input id="org" name="org" value=(org.as_deref().unwrap_or_default())
                placeholder="leave empty for your personal account";
            button type="submit" { "Use this owner" }
        }
    };
    respond(&server, StatusCode::OK, "Set up Berth", body)
}

/// The query GitHub sends the browser back with.
#[derive(Debug, Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
}

/// `GET /callback?code=...&state=...`: GitHub's redirect once the App exists.
async fn callback(State(server): State<Arc<SetupServer>>, Query(query): Query<CallbackQuery>) -> Response {
    let (Some(code), Some(state)) = (query.code.as_deref(), query.state.as_deref()) else {
        return problem(
            &server,
            StatusCode::BAD_REQUEST,
            "Nothing to set up",
            "This address is where GitHub sends you back after creating the App; it needs a code and a state.",
        );
    };
    let check = server.states().take(state, server.config.state_ttl, Instant::now());
    match check {
        StateCheck::Valid => {}
        StateCheck::Expired => {
            warn!("setup callback with an expired state refused; GitHub was not asked");
            return problem(
                &server,
                StatusCode::FORBIDDEN,
                "This setup link has expired",
                &format!(
                    "The page was opened more than {} minutes ago, so its code was not used. If GitHub created \
                     the App, delete it in its settings, then start again from the setup page.",
                    server.config.state_ttl.as_secs() / 60
                ),
            );
        }
        StateCheck::Unknown => {
            warn!("setup callback with an unknown state refused; GitHub was not asked");
            return problem(
                &server,
                StatusCode::FORBIDDEN,
                "This setup link was not started here",
                "Its state is not one this setup issued, or it was used already, so its code was not used. \
                 Start again from the address berth setup printed.",
            );
        }
    }
    if code.is_empty()
        || code.len() > 128
        || !code.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return problem(
            &server,
            StatusCode::BAD_REQUEST,
            "Not a code from GitHub",
            "The code has characters GitHub's codes never have.",
        );
    }
    // One App per run: a second tab's callback waits here, then finds the first done.
    let mut finished = server.finished.lock().await;
    if let Some(app) = finished.as_ref() {
        return problem(
            &server,
            StatusCode::CONFLICT,
            "Already set up",
            &format!(
                "This setup already wrote the files of the App {} (id {}); this second code was not used. If GitHub created a second App, delete it in its settings.",
                app.name, app.id
            ),
        );
    }
    if let Err(err) = check_existing(&server.files, server.config.force) {
        return problem(
            &server,
            StatusCode::CONFLICT,
            "Files of another App are here",
            &format!("{err:#}; the code was not used."),
        );
    }
    let app = match server.convert(code).await {
        Ok(app) => app,
        Err(reason) => {
            warn!(reason = %reason, "GitHub did not convert the manifest code");
            return problem(
                &server,
                StatusCode::BAD_GATEWAY,
                "GitHub did not hand over the App",
                &format!(
                    "{reason}. A code works once, within an hour of creating the App. If GitHub created the App, \
                     delete it in its settings, then start again from the setup page."
                ),
            );
        }
    };
    if let Err(reason) = write_files(&server.config, &server.files, &app) {
        warn!(reason = %reason, "the App's files could not be written");
        return problem(
            &server,
            StatusCode::INTERNAL_SERVER_ERROR,
            "The App's files could not be written",
            &format!(
                "{reason}. The App {} (id {}) exists on GitHub, but its key is not kept here: delete it at {}, then start again.",
                app.name, app.id, app.html_url
            ),
        );
    }
    info!(app_id = app.id, slug = %app.slug, "GitHub App set up");
    let response = done_page(&server, &app);
    *finished = Some(app);
    server.done.cancel();
    response
}

fn done_page(server: &SetupServer, app: &CreatedApp) -> Response {
    let files = &server.files;
    let body = html! {
        h1 id="done" { "The GitHub App " (app.name) " is set up" }
        p { "GitHub created it (id " (app.id) ", " code { (app.html_url) } "), and Berth wrote, mode 0600:" }
        dl {
            dt { "Private key" }
            dd { code { (files.key.display()) } }
            dt { "Webhook secret" }
            dd { code { (files.webhook_secret.display()) } }
            dt { "Settings" }
            dd { code { (files.config.display()) } }
        }
        p.muted { "berth setup has ended; this page is all that is left of it." }
        h2 { "Next" }
        ol {
            @for step in next_steps(&server.config, files, app) {
                li {
                    (step.text)
                    @if let Some(link) = &step.link {
                        br;
                        a class="button" id="install" href=(link) { "Install the App" }
                    }
                    @if let Some(command) = &step.command {
                        pre { (command) }
                    }
                }
            }
        }
    };
    respond(server, StatusCode::OK, "Berth is set up", body)
}

/// `berth setup`: serves the page until the App is set up (or `shutdown`),
/// then prints what was written and what comes next.
///
/// # Errors
/// An earlier App's files without `--force`, an unwritable state
/// directory, an address in use, or a stop before the App was set up.
pub async fn run(config: SetupConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let files = Files::in_dir(&config.state_dir);
    check_existing(&files, config.force)?;
    prepare_dir(&files.dir)?;
    let key = Secret::new(random()?);
    let listener = tokio::net::TcpListener::bind(config.bind).await.with_context(|| {
        format!("cannot listen on {} (is berth serve running there? pass --bind 127.0.0.1:8081)", config.bind)
    })?;
    let mut addr = listener.local_addr().context("the listener has no address")?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{addr}/?key={}", key.expose());
    print(&waiting_message(&config, &url, addr.port()))?;
    let server = SetupServer::new(config.clone(), key)?;
    let done = server.done();
    let stop = move || {
        let (done, shutdown) = (done.clone(), shutdown.clone());
        async move {
            tokio::select! {
                () = done.cancelled() => {}
                () = shutdown.cancelled() => {}
            }
        }
    };
    let serve = axum::serve(listener, server.clone().router()).with_graceful_shutdown(stop());
    // Once stopping, a browser's kept-alive connection gets a few seconds, no more.
    let grace = async move {
        stop().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    tokio::select! {
        served = serve => served.context("the setup page's server failed")?,
        () = grace => {}
    }
    match server.finished().await {
        Some(app) => print(&done_message(&config, &files, &app)),
        None => anyhow::bail!("setup stopped before a GitHub App was set up; nothing was written"),
    }
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}
