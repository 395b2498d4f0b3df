//! The webhook route through the whole router: signatures, headers, body
//! limits, every fixture payload, hand-made variants, and arbitrary input.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use core_types::Secret;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tower::ServiceExt;

use super::fixtures_dir;
use crate::server::{AppState, router};
use domain::signature::{WebhookSecrets, sign};
use domain::triggers::Policy;
use journal::Journal;
use telemetry::Metrics;

const SECRET: &str = "It's a Secret to Everybody";

struct Harness {
    _dir: tempfile::TempDir,
    state: AppState,
}

fn harness(policy: Policy) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let state = AppState {
        secrets: WebhookSecrets::new(Secret::new(SECRET), None),
        policy: Arc::new(policy),
        journal: Journal::open(dir.path()).unwrap(),
        ready: Arc::new(AtomicBool::new(true)),
        metrics: Arc::new(Metrics::default()),
        wake: Arc::new(Notify::new()),
    };
    Harness { _dir: dir, state }
}

struct Delivery<'a> {
    event: Option<&'a str>,
    delivery: Option<&'a str>,
    signature: Option<String>,
    body: Vec<u8>,
}

impl<'a> Delivery<'a> {
    fn signed(event: &'a str, delivery: &'a str, body: Vec<u8>) -> Self {
        Self { event: Some(event), delivery: Some(delivery), signature: Some(sign(SECRET, &body)), body }
    }
}

async fn send(state: &AppState, delivery: Delivery<'_>) -> (StatusCode, Value) {
    let mut request = Request::post("/webhook").header("content-type", "application/json");
    if let Some(event) = delivery.event {
        request = request.header("x-github-event", event);
    }
    if let Some(id) = delivery.delivery {
        request = request.header("x-github-delivery", id);
    }
    if let Some(signature) = delivery.signature {
        request = request.header("x-hub-signature-256", signature);
    }
    let response =
        router(state.clone()).oneshot(request.body(Body::from(delivery.body)).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn fixture(path: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixtures_dir().join("payloads").join(path)).unwrap()).unwrap()
}

#[tokio::test]
async fn every_fixture_gets_its_documented_answer() {
    let harness = harness(Policy::default());
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(fixtures_dir().join("MANIFEST.json")).unwrap()).unwrap();
    let mut answers = String::new();
    for (n, entry) in manifest.as_array().unwrap().iter().enumerate() {
        let file = entry["file"].as_str().unwrap();
        let body = std::fs::read(fixtures_dir().join(file)).unwrap();
        let delivery_id = format!("fixture-{n}");
        let delivery = Delivery {
            event: entry["x_github_event"].as_str(),
            delivery: Some(&delivery_id),
            signature: entry["x_hub_signature_256_with_docs_secret"].as_str().map(str::to_owned),
            body,
        };
        let (status, answer) = send(&harness.state, delivery).await;
        let line = format!(
            "{} {} {} {}\n",
            file.trim_start_matches("payloads/"),
            status.as_u16(),
            answer["outcome"].as_str().unwrap_or("-"),
            answer["reason"].as_str().or(answer["error"].as_str()).unwrap_or("-")
        );
        answers.push_str(&line);
    }
    let expected_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/tests/fixture_answers.txt");
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&expected_path, &answers).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    assert_eq!(answers, expected, "fixture answers changed; review and rerun with UPDATE_EXPECT=1");
    assert_eq!(answers.lines().count(), 102);
}

#[tokio::test]
async fn bad_signatures_are_401_and_nothing_is_recorded() {
    let harness = harness(Policy::default());
    let body = serde_json::to_vec(&fixture("ping/ping.json")).unwrap();
    for signature in
        [None, Some("sha256=00".to_owned()), Some(sign("wrong secret", &body)), Some("sha1=abc".to_owned())]
    {
        let delivery =
            Delivery { event: Some("ping"), delivery: Some("bad-sig"), signature, body: body.clone() };
        let (status, answer) = send(&harness.state, delivery).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
        assert!(answer["error"].as_str().unwrap().to_lowercase().contains("signature"), "{answer}");
    }
    assert!(harness.state.journal.delivery("bad-sig").unwrap().is_none());
    // A bad signature is refused before headers are looked at.
    let (status, _) =
        send(&harness.state, Delivery { event: None, delivery: None, signature: None, body: b"{".to_vec() })
            .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn missing_headers_and_malformed_bodies_are_400_with_the_reason() {
    let harness = harness(Policy::default());
    let body = br#"{"zen":"hi"}"#.to_vec();
    let no_event = Delivery { event: None, ..Delivery::signed("ping", "d-1", body.clone()) };
    let (status, answer) = send(&harness.state, no_event).await;
    assert_eq!(
        (status, answer["error"].as_str().unwrap()),
        (StatusCode::BAD_REQUEST, "missing x-github-event header")
    );
    let no_delivery = Delivery { delivery: None, ..Delivery::signed("ping", "d-1", body.clone()) };
    let (status, answer) = send(&harness.state, no_delivery).await;
    assert_eq!(
        (status, answer["error"].as_str().unwrap()),
        (StatusCode::BAD_REQUEST, "missing x-github-delivery header")
    );

    let (status, answer) = send(&harness.state, Delivery::signed("ping", "d-2", b"not json".to_vec())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(answer["error"].as_str().unwrap().starts_with("invalid ping payload"), "{answer}");

    let wrong_shape =
        serde_json::to_vec(&json!({"action": "created", "comment": {"body": "/berth review"}})).unwrap();
    let (status, answer) = send(&harness.state, Delivery::signed("issue_comment", "d-3", wrong_shape)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(answer["error"].as_str().unwrap().contains("invalid issue_comment payload"), "{answer}");

    let (status, _) = send(&harness.state, Delivery::signed("Ping!", "d-4", body.clone())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = send(&harness.state, Delivery::signed("ping", "d 5", body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_body_over_25_mib_is_413_also_when_streamed() {
    let harness = harness(Policy::default());
    let big = vec![b' '; 25 * 1024 * 1024 + 1];
    let (status, _) = send(&harness.state, Delivery::signed("ping", "big", big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // Without a Content-Length the limit still holds while reading.
    let chunks = (0..27).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 1024 * 1024])));
    let request = Request::post("/webhook")
        .header("x-github-event", "ping")
        .header("x-github-delivery", "big-stream")
        .header("x-hub-signature-256", "sha256=".to_owned() + &"0".repeat(64))
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    let response = router(harness.state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

fn comment_on_pull(body: &str, association: &str) -> Value {
    let mut payload = fixture("issue_comment/created.go-playground.on-pr-slash-command.json");
    payload["comment"]["body"] = json!(body);
    payload["comment"]["author_association"] = json!(association);
    payload
}

fn comment_on_issue(body: &str, association: &str) -> Value {
    let mut payload = fixture("issue_comment/created.json");
    payload["comment"]["body"] = json!(body);
    payload["comment"]["author_association"] = json!(association);
    payload
}

async fn answer_of(state: &AppState, event: &str, delivery: &str, payload: &Value) -> (StatusCode, Value) {
    send(state, Delivery::signed(event, delivery, serde_json::to_vec(payload).unwrap())).await
}

#[tokio::test]
async fn hand_made_variants_get_the_right_answer() {
    let harness = harness(Policy::default());
    let state = &harness.state;
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        ("issue_comment", comment_on_pull("/berth review", "COLLABORATOR"), "queued", ""),
        (
            "issue_comment",
            comment_on_pull("/berth review", "CONTRIBUTOR"),
            "ignored",
            "author association CONTRIBUTOR",
        ),
        ("issue_comment", comment_on_pull("/berth review", "FIRST_TIMER"), "ignored", "is not trusted"),
        (
            "issue_comment",
            comment_on_issue("\r\n  /BERTH IMPLEMENT add tests\r\nmore", "OWNER"),
            "queued",
            "",
        ),
        ("issue_comment", comment_on_issue("/berth review", "OWNER"), "ignored", "needs a pull request"),
        ("issue_comment", comment_on_issue("nice issue", "OWNER"), "ignored", "no /berth command"),
        ("issue_comment", comment_on_issue("/berth frobnicate", "OWNER"), "ignored", "unknown command"),
    ];
    for (n, (event, payload, outcome, reason)) in cases.iter().enumerate() {
        let (status, answer) = answer_of(state, event, &format!("variant-{n}"), payload).await;
        assert_eq!(status, StatusCode::ACCEPTED, "case {n}: {answer}");
        assert_eq!(answer["outcome"], *outcome, "case {n}: {answer}");
        assert!(answer["reason"].as_str().unwrap_or("").contains(reason), "case {n}: {answer}");
    }
}

#[tokio::test]
async fn bots_edits_forks_and_unknown_actions_never_trigger() {
    let harness = harness(Policy { auto_review: true, ..Policy::default() });
    let state = &harness.state;

    let mut bot = comment_on_pull("/berth review", "OWNER");
    bot["sender"]["login"] = json!("berth-app[bot]");
    bot["sender"]["type"] = json!("Bot");
    bot["comment"]["user"] = bot["sender"].clone();
    let (_, answer) = answer_of(state, "issue_comment", "bot", &bot).await;
    assert_eq!(answer["outcome"], "ignored");
    assert!(answer["reason"].as_str().unwrap().contains("is a bot"), "{answer}");

    let mut edited = comment_on_pull("/berth review", "OWNER");
    edited["action"] = json!("edited");
    let (_, answer) = answer_of(state, "issue_comment", "edited", &edited).await;
    assert_eq!(answer["outcome"], "ignored");

    let fork = fixture("pull_request/synchronize.googleapis.fork-contributor.json");
    let mut opened_fork = fork.clone();
    opened_fork["action"] = json!("opened");
    let (_, answer) = answer_of(state, "pull_request", "fork", &opened_fork).await;
    assert_eq!(answer["outcome"], "ignored");
    assert!(answer["reason"].as_str().unwrap().contains("fork"), "{answer}");

    let mut deleted_fork = fixture("pull_request/opened.json");
    deleted_fork["pull_request"]["head"]["repo"] = Value::Null;
    let (_, answer) = answer_of(state, "pull_request", "deleted-fork", &deleted_fork).await;
    assert!(answer["reason"].as_str().unwrap().contains("deleted fork"), "{answer}");

    let mut unknown = fixture("pull_request/opened.json");
    unknown["action"] = json!("teleported");
    let (status, answer) = answer_of(state, "pull_request", "unknown-action", &unknown).await;
    assert_eq!((status, answer["outcome"].as_str().unwrap()), (StatusCode::ACCEPTED, "ignored"));

    let mut draft = fixture("pull_request/opened.json");
    draft["pull_request"]["draft"] = json!(true);
    let (_, answer) = answer_of(state, "pull_request", "draft", &draft).await;
    assert!(answer["reason"].as_str().unwrap().contains("draft"), "{answer}");
}

#[tokio::test]
async fn automatic_review_queues_own_pull_requests_and_a_push_supersedes() {
    let harness = harness(Policy { auto_review: true, ..Policy::default() });
    let state = &harness.state;
    let opened = fixture("pull_request/opened.json");
    let (_, answer) = answer_of(state, "pull_request", "pr-opened", &opened).await;
    assert_eq!(answer["outcome"], "queued", "{answer}");
    let first = answer["task"].as_str().unwrap().to_owned();

    let mut pushed = opened.clone();
    pushed["action"] = json!("synchronize");
    pushed["pull_request"]["head"]["sha"] = json!("1111111111111111111111111111111111111111");
    let (_, answer) = answer_of(state, "pull_request", "pr-pushed", &pushed).await;
    assert_eq!(answer["outcome"], "cancel_requested", "{answer}");
    assert_eq!(answer["cancelled"], json!([first]));
    assert!(answer["task"].is_string(), "the new head is queued: {answer}");
    assert!(answer["reason"].as_str().unwrap().contains("superseded by a push of 1111111"));
}

#[tokio::test]
async fn duplicates_cancel_and_close() {
    let harness = harness(Policy::default());
    let state = &harness.state;
    let review = comment_on_pull("/berth review", "MEMBER");
    let (_, first) = answer_of(state, "issue_comment", "dup-1", &review).await;
    assert_eq!(first["outcome"], "queued");
    let (_, again) = answer_of(state, "issue_comment", "dup-1", &review).await;
    assert_eq!(
        (again["outcome"].as_str(), again["task"].as_str()),
        (Some("duplicate"), first["task"].as_str())
    );
    let (_, second) = answer_of(state, "issue_comment", "dup-2", &review).await;
    assert_eq!(
        (second["outcome"].as_str(), second["task"].as_str()),
        (Some("duplicate"), first["task"].as_str())
    );

    let (_, cancel) =
        answer_of(state, "issue_comment", "cancel-1", &comment_on_pull("/berth cancel", "MEMBER")).await;
    assert_eq!(cancel["outcome"], "cancel_requested", "{cancel}");
    assert_eq!(cancel["cancelled"], json!([first["task"]]));
    let (_, untrusted) =
        answer_of(state, "issue_comment", "cancel-2", &comment_on_pull("/berth cancel", "NONE")).await;
    assert_eq!(untrusted["outcome"], "ignored");

    let implement = comment_on_issue("/berth implement", "OWNER");
    let (_, queued) = answer_of(state, "issue_comment", "impl-1", &implement).await;
    assert_eq!(queued["outcome"], "queued");
    let mut closed = fixture("issues/closed.json");
    closed["issue"]["number"] = implement["issue"]["number"].clone();
    closed["repository"] = implement["repository"].clone();
    let (_, answer) = answer_of(state, "issues", "closed-1", &closed).await;
    assert_eq!(answer["outcome"], "cancel_requested", "{answer}");
    assert!(answer["reason"].as_str().unwrap().contains("issue closed by @"), "{answer}");
}

#[tokio::test]
async fn trusted_users_and_allowed_repos_are_enforced() {
    let policy = Policy {
        trusted_users: vec!["alice".into()],
        allowed_repos: vec!["octo-org/*".into()],
        ..Policy::default()
    };
    let harness = harness(policy);
    let mut payload = comment_on_pull("/berth review", "OWNER");
    let (_, answer) = answer_of(&harness.state, "issue_comment", "t-1", &payload).await;
    assert!(answer["reason"].as_str().unwrap().contains("BERTH_ALLOWED_REPOS"), "{answer}");
    payload["repository"]["full_name"] = json!("octo-org/repo");
    let (_, answer) = answer_of(&harness.state, "issue_comment", "t-2", &payload).await;
    assert!(answer["reason"].as_str().unwrap().contains("not in BERTH_TRUSTED_USERS"), "{answer}");
    payload["sender"]["login"] = json!("Alice");
    let (_, answer) = answer_of(&harness.state, "issue_comment", "t-3", &payload).await;
    assert_eq!(answer["outcome"], "queued", "{answer}");
}

#[tokio::test]
async fn the_implement_label_queues_and_other_labels_do_not() {
    let harness = harness(Policy::default());
    let mut labeled = fixture("issues/labeled.json");
    let (_, answer) = answer_of(&harness.state, "issues", "l-1", &labeled).await;
    assert_eq!(answer["outcome"], "ignored");
    labeled["label"]["name"] = json!("berth:implement");
    let (_, answer) = answer_of(&harness.state, "issues", "l-2", &labeled).await;
    assert_eq!(answer["outcome"], "queued", "{answer}");
    let task =
        harness.state.journal.task(&answer["task"].as_str().unwrap().parse().unwrap()).unwrap().unwrap();
    assert_eq!(task.kind, core_types::TaskKind::Implement);
}

#[tokio::test]
async fn a_signed_comment_replayed_under_a_new_delivery_id_makes_no_second_task() {
    let harness = harness(Policy::default());
    let state = &harness.state;
    let review = comment_on_pull("/berth review", "MEMBER");
    let (_, first) = answer_of(state, "issue_comment", "replay-1", &review).await;
    assert_eq!(first["outcome"], "queued", "{first}");
    // The task ends, so the active-task key no longer stands in the way.
    let task: core_types::TaskId = first["task"].as_str().unwrap().parse().unwrap();
    let finished = Box::new(|task: &mut domain::tasks::TaskRecord| {
        task.state = domain::tasks::TaskState::Finished {
            outcome: domain::tasks::Outcome::new(domain::tasks::Conclusion::Success, "Done", "", 0),
        }
    });
    state.journal.update_task(&task, finished).await.unwrap().unwrap();
    // The same signed body, captured and sent again under a new delivery id.
    let (status, replay) = answer_of(state, "issue_comment", "replay-2", &review).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(replay["outcome"], "duplicate", "{replay}");
    assert_eq!(replay["task"], first["task"]);
    let comment = review["comment"]["id"].as_u64().unwrap();
    let reason = replay["reason"].as_str().unwrap();
    assert!(reason.contains(&format!("comment {comment} already made task {task}")), "{reason}");
    assert_eq!(state.journal.tasks().unwrap().len(), 1, "no second task");
    // Another comment with the same words is another request.
    let mut again = review.clone();
    again["comment"]["id"] = json!(comment + 1);
    let (_, answer) = answer_of(state, "issue_comment", "replay-3", &again).await;
    assert_eq!(answer["outcome"], "queued", "{answer}");
}

#[tokio::test]
async fn a_label_trigger_is_deduped_by_delivery_and_by_the_active_task_as_before() {
    let harness = harness(Policy::default());
    let state = &harness.state;
    let mut labeled = fixture("issues/labeled.json");
    labeled["label"]["name"] = json!("berth:implement");
    let (_, first) = answer_of(state, "issues", "label-1", &labeled).await;
    assert_eq!(first["outcome"], "queued", "{first}");
    let (_, same) = answer_of(state, "issues", "label-1", &labeled).await;
    assert!(same["reason"].as_str().unwrap().contains("already received"), "{same}");
    let (_, active) = answer_of(state, "issues", "label-2", &labeled).await;
    assert!(active["reason"].as_str().unwrap().contains("already queued or running"), "{active}");
    let task: core_types::TaskId = first["task"].as_str().unwrap().parse().unwrap();
    let finished = Box::new(|task: &mut domain::tasks::TaskRecord| {
        task.state = domain::tasks::TaskState::Finished {
            outcome: domain::tasks::Outcome::new(domain::tasks::Conclusion::Success, "Done", "", 0),
        }
    });
    state.journal.update_task(&task, finished).await.unwrap().unwrap();
    let (_, after) = answer_of(state, "issues", "label-3", &labeled).await;
    assert_eq!(after["outcome"], "queued", "a label added again later is a new request: {after}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 300, ..Default::default() })]

    #[test]
    fn arbitrary_input_never_panics_and_gets_a_documented_status(
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
        event in proptest::option::of("[a-z_]{0,20}|\\PC{0,10}"),
        delivery in proptest::option::of("[a-zA-Z0-9-]{0,40}|\\PC{0,10}"),
        sign_it in proptest::prelude::any::<bool>(),
        json_body in proptest::prelude::any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let harness = harness(Policy::default());
        // Half the cases carry JSON that reaches the event parsers.
        let body = if json_body {
            let text = String::from_utf8_lossy(&body).into_owned();
            serde_json::to_vec(&json!({"action": "created", "comment": {"id": 1, "body": text, "user": {"login": text}}, "issue": {"number": 1}, "repository": {"full_name": text}, "sender": {"login": "x"}})).unwrap()
        } else {
            body
        };
        let signature = if sign_it { Some(sign(SECRET, &body)) } else { None };
        let delivery = Delivery { event: event.as_deref(), delivery: delivery.as_deref(), signature, body };
        let (status, _) = runtime.block_on(send(&harness.state, delivery));
        proptest::prop_assert!([202, 400, 401, 413].contains(&status.as_u16()), "status {}", status);
    }
}
