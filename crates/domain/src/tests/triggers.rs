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
        prompt: String::new(),
        subject_title: String::new(),
        subject_body: String::new(),
        base_ref: None,
        sender: "octocat".into(),
        installation: None,
        comment_id: None,
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

#[test]
fn dedupe_keys_separate_kind_number_and_review_head() {
    assert_eq!(request("o/r", 1, TaskKind::Review, None).dedupe_key(), "o/r#1:review");
    assert_eq!(request("o/r", 1, TaskKind::Review, Some("abc")).dedupe_key(), "o/r#1:review@abc");
    assert_eq!(request("o/r", 1, TaskKind::Implement, Some("abc")).dedupe_key(), "o/r#1:implement");
}
