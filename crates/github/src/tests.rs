//! The typed models doctor and setup read, from GitHub's JSON.

use serde_json::json;

use crate::{
    AccountKind, AppInfo, CreatedApp, Delivery, GitHubError, HookConfig, Installation, RepositorySelection,
    check_private_key,
};

#[test]
fn a_key_that_is_not_rsa_is_refused_with_the_parsers_reason() {
    let err = check_private_key(b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")
        .unwrap_err();
    let GitHubError::PrivateKey { reason } = &err else { panic!("{err:?}") };
    assert!(!reason.is_empty());
    assert_eq!(err.to_string(), format!("not a usable RSA private key ({reason})"));
}

#[test]
fn the_app_description_keeps_what_doctor_reads() {
    let app = AppInfo::from_json(&json!({
        "id": 7,
        "slug": "berth-x",
        "name": "Berth X",
        "owner": {"login": "acme", "type": "Organization"},
        "html_url": "https://github.com/apps/berth-x",
        "permissions": {"checks": "write", "metadata": "read"},
        "events": ["issue_comment", "issues"],
    }))
    .unwrap();
    assert_eq!((app.id, app.slug.as_str(), app.name.as_str()), (7, "berth-x", "Berth X"));
    assert_eq!((app.owner.login.as_str(), app.owner.kind), ("acme", AccountKind::Organization));
    assert_eq!(app.html_url.as_deref(), Some("https://github.com/apps/berth-x"));
    assert_eq!(app.permissions["checks"], "write");
    assert_eq!(app.events, ["issue_comment", "issues"]);

    let bare = AppInfo::from_json(&json!({"id": 7, "slug": "b", "owner": {"login": "al"}})).unwrap();
    assert_eq!(
        (bare.name.as_str(), bare.owner.kind),
        ("b", AccountKind::User),
        "the name defaults to the slug"
    );
    assert!(bare.permissions.is_empty() && bare.events.is_empty());
    assert!(AppInfo::from_json(&json!({"id": 7})).is_none(), "no slug");
    assert!(AppInfo::from_json(&json!({"slug": "b"})).is_none(), "no id");
}

#[test]
fn installations_say_whom_they_cover_and_whether_they_are_suspended() {
    let all = Installation::from_json(
        &json!({"id": 1, "account": {"login": "acme"}, "repository_selection": "all", "suspended_at": null}),
    )
    .unwrap();
    assert_eq!((all.id, all.account.login.as_str()), (1, "acme"));
    assert_eq!(all.repository_selection, RepositorySelection::All);
    assert!(!all.suspended);
    let suspended = Installation::from_json(
        &json!({"id": 2, "account": {"login": "al"}, "suspended_at": "2026-01-01T00:00:00Z"}),
    )
    .unwrap();
    assert_eq!(suspended.repository_selection, RepositorySelection::Selected);
    assert!(suspended.suspended);
}

#[test]
fn the_hook_config_keeps_url_content_type_and_tls() {
    let hook = HookConfig::from_json(
        &json!({"url": "https://b.example.com/webhook", "content_type": "json", "insecure_ssl": "1", "secret": "********"}),
    );
    assert_eq!(hook.url, "https://b.example.com/webhook");
    assert_eq!(hook.content_type.as_deref(), Some("json"));
    assert!(hook.insecure_ssl);
    let empty = HookConfig::from_json(&json!({}));
    assert_eq!((empty.url.as_str(), empty.content_type, empty.insecure_ssl), ("", None, false));
}

#[test]
fn deliveries_keep_the_text_doctor_names_them_by() {
    let delivery = Delivery::from_json(&json!({
        "id": 9, "guid": "g1", "status_code": 401, "status": "Invalid HTTP Response: 401",
        "event": "issue_comment", "action": "created", "delivered_at": "2026-11-30T10:00:00Z",
    }))
    .unwrap();
    assert_eq!(delivery.delivered_at.as_deref(), Some("2026-11-30T10:00:00Z"));
    assert_eq!(delivery.delivered_unix, crate::parse_github_time("2026-11-30T10:00:00Z"));
    assert_eq!(
        (delivery.event.as_deref(), delivery.action.as_deref()),
        (Some("issue_comment"), Some("created"))
    );
    assert_eq!(delivery.status.as_deref(), Some("Invalid HTTP Response: 401"));
    assert!(!delivery.succeeded());
}

#[test]
fn a_page_link_gives_only_its_cursor() {
    let cursor = |link: &str| crate::cursor_of(link);
    assert_eq!(
        cursor("https://api.github.com/app/hook/deliveries?per_page=100&cursor=v1_12077215967").as_deref(),
        Some("v1_12077215967")
    );
    // Escaped, first among others, or before a fragment.
    assert_eq!(cursor("http://h/x?cursor=v1_1%2B2&per_page=2").as_deref(), Some("v1_1+2"));
    assert_eq!(cursor("http://h/x?per_page=2&cursor=v1_9#top").as_deref(), Some("v1_9"));
    // No cursor, an empty one, no query: no next page to ask for.
    assert_eq!(cursor("http://h/x?page=2"), None);
    assert_eq!(cursor("http://h/x?cursor="), None);
    assert_eq!(cursor("http://h/x"), None);
}

#[test]
fn a_conversion_answer_without_a_usable_key_is_refused_in_order() {
    let refused = |value: serde_json::Value| CreatedApp::from_json(&value).unwrap_err();
    assert_eq!(refused(json!({"slug": "b"})), "the answer has no App id");
    assert_eq!(refused(json!({"id": 7, "slug": ""})), "the answer has no slug");
    assert_eq!(refused(json!({"id": 7, "slug": "b"})), "the answer has no private key");
    assert_eq!(
        refused(json!({"id": 7, "slug": "b", "pem": "not a key"})),
        "the private key in the answer is not a usable RSA key"
    );
}
