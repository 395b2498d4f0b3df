use core_types::TaskKind;

use crate::request::TaskRequest;
use crate::triggers::{Command, parse_command};

#[test]
fn commands_are_recognised_robustly() {
    let cases: &[(&str, Option<Command>)] = &[
        ("/berth review", Some(Command::Run { kind: TaskKind::Review, args: String::new() })),
        (
            "  \n\t/berth review please look at x\r\nthanks",
            Some(Command::Run { kind: TaskKind::Review, args: "please look at x".into() }),
        ),
        ("/BERTH REVIEW", Some(Command::Run { kind: TaskKind::Review, args: String::new() })),
        (
            "/Berth Implement with tests\r\n",
            Some(Command::Run { kind: TaskKind::Implement, args: "with tests".into() }),
        ),
        ("/berth cancel", Some(Command::Cancel)),
        ("/berth Retry", Some(Command::Retry)),
        ("/berth  stop", Some(Command::Cancel)),
        ("/berth deploy", Some(Command::Unknown("deploy".into()))),
        ("/berth", Some(Command::Unknown(String::new()))),
        ("/berthreview", None),
        ("please /berth review", None),
        ("", None),
        ("/build", None),
        ("\u{feff}/berth review", Some(Command::Run { kind: TaskKind::Review, args: String::new() })),
    ];
    for (body, expected) in cases {
        assert_eq!(&parse_command("/berth", body), expected, "{body:?}");
    }
    assert_eq!(
        parse_command("!bot", "!BOT review"),
        Some(Command::Run { kind: TaskKind::Review, args: String::new() })
    );
    // Multi-byte text right at the prefix boundary does not panic.
    assert_eq!(parse_command("/berth", "/bé"), None);
    assert_eq!(parse_command("/berth", "/bert€ review"), None);
}

fn request(repo: &str, number: u64, kind: TaskKind, head: Option<&str>) -> TaskRequest {
    TaskRequest {
        kind,
        repo: repo.into(),
        number,
        head_sha: head.map(str::to_owned),
        head_ref: None,
        clone_url: "https://example.invalid/x.git".into(),
        repo_id: None,
        prompt: String::new(),
        subject_title: String::new(),
        subject_body: String::new(),
        base_ref: None,
        sender: "octocat".into(),
        installation: None,
        comment_id: None,
        follow_up: false,
    }
}

#[test]
fn task_ids_are_readable_valid_and_unique_per_delivery() {
    let review = request("Octo-Org/Hello_World.rs", 42, TaskKind::Review, None);
    let id = review.task_id("72d3162e-cc78-11e3-81ab-4c9367dc0958");
    assert!(id.as_str().starts_with("review-hello-world-rs-42-"), "{id}");
    assert_ne!(id, review.task_id("another-delivery"));
    assert_eq!(id, review.task_id("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
    let long = request(&format!("o/{}", "x".repeat(200)), u64::MAX, TaskKind::Implement, None);
    assert!(long.task_id("d").as_str().len() <= 63);
    let symbols = request("o/___", 1, TaskKind::Review, None);
    assert!(symbols.task_id("d").as_str().starts_with("review-1-"));
}

/// Task ids are in journals and on container labels: the code that makes
/// them may change, the ids it makes may not. Each case is one of the
/// formula's paths (the head in the hash, the slug cut to fit, a name with
/// nothing left of it, characters that are not ASCII).
#[test]
fn task_ids_stay_what_they_were() {
    let long = format!("o/{}", "Long-Name".repeat(20));
    let cases = [
        (
            request("Octo-Org/Hello_World.rs", 42, TaskKind::Review, None),
            "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "review-hello-world-rs-42-14ddbe76",
        ),
        (request("o/r", 7, TaskKind::Review, Some("0123abc")), "d-1", "review-r-7-8726580b"),
        (request("o/r", 7, TaskKind::Implement, Some("0123abc")), "d-1", "implement-r-7-e50a4fce"),
        (
            request(&long, u64::MAX, TaskKind::Implement, None),
            "d-2",
            "implement-long-namelong-namelong-18446744073709551615-d024bf09",
        ),
        (request("o/___", 1, TaskKind::Review, None), "d-3", "review-1-61dd1ea2"),
        (request("o/Café-Zürich", 12, TaskKind::Review, None), "d-4", "review-caf--z-rich-12-c3835ede"),
    ];
    for (request, delivery, expected) in cases {
        assert_eq!(request.task_id(delivery).as_str(), expected, "{} #{}", request.repo, request.number);
    }
}

#[test]
fn dedupe_keys_separate_kind_number_and_review_head() {
    assert_eq!(request("o/r", 1, TaskKind::Review, None).dedupe_key(), "o/r#1:review");
    assert_eq!(request("o/r", 1, TaskKind::Review, Some("abc")).dedupe_key(), "o/r#1:review@abc");
    assert_eq!(request("o/r", 1, TaskKind::Implement, Some("abc")).dedupe_key(), "o/r#1:implement");
}

mod reruns {
    use serde_json::{Value, json};

    use crate::events::Event;
    use crate::request::{RetryRequest, RetryTarget};
    use crate::triggers::{Decision, Policy};
    use core_types::TaskKind;

    fn fixture(path: &str) -> Value {
        let path =
            format!("{}/../../tests/fixtures/github-webhooks/payloads/{path}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_slice(&std::fs::read(&path).expect("fixture exists")).expect("fixture is JSON")
    }

    fn decide(policy: &Policy, event: &str, payload: &Value) -> Decision {
        policy.decide(&Event::parse(event, payload.to_string().as_bytes()).expect("payload parses"))
    }

    fn ours() -> Policy {
        Policy { app_id: Some(42), ..Policy::default() }
    }

    /// The fixture's re-run, made to be of Berth's check run `name` on pull request #7.
    fn berth_check_run(name: &str) -> Value {
        let mut payload = fixture("check_run/rerequested.json");
        payload["check_run"]["name"] = json!(name);
        payload["check_run"]["app"]["id"] = json!(42);
        payload["check_run"]["external_id"] = json!("review-hello-world-7-0a1b2c3d");
        payload["check_run"]["pull_requests"] = json!([{"number": 7, "id": 1, "url": "x"}]);
        payload
    }

    #[test]
    fn other_apps_check_runs_and_suites_are_ignored_with_a_reason() {
        let cases = [
            (
                "check_run",
                fixture("check_run/rerequested.json"),
                "check run \"randscape\" is not one of berth's",
            ),
            (
                "check_suite",
                fixture("check_suite/rerequested.json"),
                "check suite of app 29310 is not berth's",
            ),
            ("check_run", fixture("check_run/completed.json"), "check_run completed: only a re-run triggers"),
            (
                "check_suite",
                fixture("check_suite/requested.json"),
                "check_suite requested: only a re-run triggers",
            ),
        ];
        for (event, payload, reason) in cases {
            assert_eq!(decide(&ours(), event, &payload), Decision::Ignore(reason.into()), "{event}");
        }
        // Named like Berth's, made by another App.
        let mut imposter = berth_check_run("berth/review");
        imposter["check_run"]["app"]["id"] = json!(99);
        assert!(matches!(decide(&ours(), "check_run", &imposter), Decision::Ignore(_)));
    }

    #[test]
    fn a_rerun_of_a_review_check_run_reviews_the_pull_requests_current_head() {
        let Decision::Queue(request) = decide(&ours(), "check_run", &berth_check_run("berth/review")) else {
            panic!("not queued");
        };
        assert_eq!(
            (request.kind, request.repo.as_str(), request.number),
            (TaskKind::Review, "github/hello-world", 7)
        );
        assert_eq!(
            (request.head_sha, request.sender.as_str(), request.installation),
            (None, "octocat", Some(1))
        );
        // Without the App's id, the name alone tells Berth's check run.
        assert!(matches!(
            decide(&Policy::default(), "check_run", &berth_check_run("berth/review")),
            Decision::Queue(_)
        ));
        let mut detached = berth_check_run("berth/review");
        detached["check_run"]["pull_requests"] = json!([]);
        assert!(
            matches!(decide(&ours(), "check_run", &detached), Decision::Ignore(reason) if reason.contains("no pull request"))
        );
    }

    #[test]
    fn a_rerun_of_an_implement_check_run_retries_its_task() {
        assert_eq!(
            decide(&ours(), "check_run", &berth_check_run("berth/implement")),
            Decision::Retry(RetryRequest {
                repo: "github/hello-world".into(),
                repo_id: Some(526),
                target: RetryTarget::Task("review-hello-world-7-0a1b2c3d".into()),
                sender: "octocat".into(),
                installation: Some(1),
                comment_id: None,
            })
        );
    }

    #[test]
    fn a_rerun_of_berths_check_suite_reviews_each_pull_request() {
        let mut suite = fixture("check_suite/rerequested.json");
        suite["sender"] = json!({"login": "Codertocat", "type": "User"});
        let policy = Policy { app_id: Some(29310), ..Policy::default() };
        let Decision::Queue(request) = decide(&policy, "check_suite", &suite) else { panic!("not queued") };
        assert_eq!((request.kind, request.number, request.head_sha), (TaskKind::Review, 2, None));
        suite["check_suite"]["pull_requests"] = json!([{"number": 2}, {"number": 3}]);
        let Decision::QueueEach(requests) = decide(&policy, "check_suite", &suite) else {
            panic!("not queued")
        };
        assert_eq!(requests.iter().map(|request| request.number).collect::<Vec<_>>(), [2, 3]);
        // The fixture's sender is a bot, and bots never trigger.
        let bot = fixture("check_suite/rerequested.json");
        assert!(
            matches!(decide(&policy, "check_suite", &bot), Decision::Ignore(reason) if reason.contains("is a bot"))
        );
    }

    #[test]
    fn reruns_follow_the_trust_rules() {
        let listed = Policy { trusted_users: vec!["hubot".into()], ..ours() };
        assert_eq!(
            decide(&listed, "check_run", &berth_check_run("berth/review")),
            Decision::Ignore("sender @octocat is not in BERTH_TRUSTED_USERS".into())
        );
        let elsewhere = Policy { allowed_repos: vec!["octo/*".into()], ..ours() };
        assert!(matches!(
            decide(&elsewhere, "check_run", &berth_check_run("berth/review")),
            Decision::Ignore(_)
        ));
    }

    fn comment(body: &str, association: &str) -> Value {
        json!({
            "action": "created",
            "comment": {"id": 11, "body": body, "user": {"login": "octocat", "type": "User"}, "author_association": association},
            "issue": {"number": 7, "pull_request": {}},
            "repository": {"full_name": "octo/repo", "clone_url": "https://example.invalid/octo/repo.git"},
            "sender": {"login": "octocat", "type": "User"},
            "installation": {"id": 3}
        })
    }

    #[test]
    fn berth_retry_asks_the_journal_for_the_last_task() {
        assert_eq!(
            decide(&Policy::default(), "issue_comment", &comment("/berth retry", "MEMBER")),
            Decision::Retry(RetryRequest {
                repo: "octo/repo".into(),
                repo_id: None,
                target: RetryTarget::Latest { number: 7 },
                sender: "octocat".into(),
                installation: Some(3),
                comment_id: Some(11),
            })
        );
        assert!(matches!(
            decide(&Policy::default(), "issue_comment", &comment("/berth retry", "NONE")),
            Decision::Ignore(reason) if reason.contains("is not trusted")
        ));
    }
}

mod refusals_and_follow_ups {
    use serde_json::{Value, json};

    use crate::events::Event;
    use crate::request::Refusal;
    use crate::triggers::{Decision, Policy};
    use core_types::TaskKind;

    fn decide(policy: &Policy, payload: &Value) -> Decision {
        policy.decide(&Event::parse("issue_comment", payload.to_string().as_bytes()).expect("payload parses"))
    }

    fn comment(body: &str, on_pull: bool, association: &str) -> Value {
        let mut payload = json!({
            "action": "created",
            "comment": {"id": 11, "body": body, "user": {"login": "octocat", "type": "User"}, "author_association": association},
            "issue": {"number": 7, "title": "Add a greeting", "body": "Please."},
            "repository": {"full_name": "octo/repo", "clone_url": "https://example.invalid/octo/repo.git", "default_branch": "main"},
            "sender": {"login": "octocat", "type": "User"},
            "installation": {"id": 3}
        });
        if on_pull {
            payload["issue"]["pull_request"] = json!({});
        }
        payload
    }

    fn refusal(reason: &str) -> Decision {
        Decision::Refuse(Refusal {
            repo: "octo/repo".into(),
            number: 7,
            sender: "octocat".into(),
            installation: Some(3),
            comment_id: 11,
            reason: reason.into(),
        })
    }

    #[test]
    fn implement_on_a_pull_request_follows_it_up_from_its_branch() {
        let Decision::Queue(request) =
            decide(&Policy::default(), &comment("/berth implement fix it", true, "MEMBER"))
        else {
            panic!("queued");
        };
        assert_eq!(request.kind, TaskKind::Implement);
        assert!(request.follow_up);
        assert_eq!(request.number, 7);
        // The branch is the pull request's, read at dispatch; not the default branch.
        assert_eq!(request.head_ref, None);
        assert_eq!(request.prompt, "fix it");
        let Decision::Queue(fresh) =
            decide(&Policy::default(), &comment("/berth implement", false, "MEMBER"))
        else {
            panic!("queued");
        };
        assert!(!fresh.follow_up);
        assert_eq!(fresh.head_ref.as_deref(), Some("main"));
    }

    #[test]
    fn a_trusted_senders_refused_command_is_answered_with_its_reason() {
        assert_eq!(
            decide(&Policy::default(), &comment("/berth review", false, "OWNER")),
            refusal("`/berth review` needs a pull request; #7 is an issue")
        );
        assert_eq!(
            decide(&Policy::default(), &comment("/berth deploy`@all` now", true, "COLLABORATOR")),
            refusal("unknown command `/berth deploy@all` (known: review, implement, cancel, retry)")
        );
        let Decision::Refuse(refused) = refusal("x") else { unreachable!() };
        assert_eq!(refused.message(), "@octocat, Berth did not act on your command: x.");
    }

    #[test]
    fn untrusted_senders_bots_and_other_repositories_get_no_answer() {
        let quiet = |decision: Decision| assert!(matches!(decision, Decision::Ignore(_)), "{decision:?}");
        quiet(decide(&Policy::default(), &comment("/berth deploy", true, "NONE")));
        quiet(decide(&Policy::default(), &comment("/berth review", false, "CONTRIBUTOR")));
        let mut bot = comment("/berth deploy", true, "OWNER");
        bot["sender"] = json!({"login": "other[bot]", "type": "Bot"});
        bot["comment"]["user"] = bot["sender"].clone();
        quiet(decide(&Policy::default(), &bot));
        let elsewhere = Policy { allowed_repos: vec!["else/*".into()], ..Policy::default() };
        quiet(decide(&elsewhere, &comment("/berth deploy", true, "OWNER")));
        let listed = Policy { trusted_users: vec!["hubot".into()], ..Policy::default() };
        quiet(decide(&listed, &comment("/berth deploy", true, "OWNER")));
    }
}

mod payload_text {
    use crate::events::Event;

    const COMMENT: &str = r#"{"action":"created","comment":{"id":11,"body":"BODY","user":{"login":"octocat"}},"issue":{"number":7},"repository":{"full_name":"octo/repo","description":"DESCRIPTION"},"sender":{"login":"octocat"}}"#;

    fn payload(body: &[u8], description: &[u8]) -> Vec<u8> {
        let text = COMMENT.as_bytes();
        let mut out = Vec::new();
        let (before_body, rest) = text.split_at(text.windows(4).position(|w| w == b"BODY").unwrap());
        let rest = &rest[4..];
        let at = rest.windows(11).position(|w| w == b"DESCRIPTION").unwrap();
        out.extend_from_slice(before_body);
        out.extend_from_slice(body);
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(description);
        out.extend_from_slice(&rest[at + 11..]);
        out
    }

    #[test]
    fn a_utf8_payload_is_read_as_text_borrowing_from_the_body() {
        let body = payload("/berth review ✓".as_bytes(), b"plain");
        let Event::IssueComment(event) = Event::parse("issue_comment", &body).unwrap() else { panic!() };
        assert_eq!(event.comment.body.as_deref(), Some("/berth review ✓"));
        assert!(matches!(event.comment.user.login, std::borrow::Cow::Borrowed("octocat")));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_refused_where_read_and_passed_over_where_skipped() {
        // In a field Berth reads: serde_json's own error, naming the event.
        let body = payload(b"/berth review \xff", b"plain");
        let err = Event::parse("issue_comment", &body).unwrap_err();
        assert_eq!(err.event, "issue_comment");
        assert!(err.source.to_string().contains("unicode"), "{}", err.source);
        // In a field it skips: parsed, as it was before the payload was checked as text.
        let body = payload(b"/berth review", b"caf\xe9");
        let Event::IssueComment(event) = Event::parse("issue_comment", &body).unwrap() else { panic!() };
        assert_eq!(event.comment.body.as_deref(), Some("/berth review"));
    }
}
