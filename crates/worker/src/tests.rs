use std::collections::BTreeMap;
use std::time::Duration;

use core_types::{ResultStatus, Secret, TaskId, TaskKind, WorkerExit, WorkerOptions, WorkerTask};
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::command::{AgentCommand, CommandError, PlaceholderValues, render_text, split};
use crate::git::{Author, Git, token_secrets};
use crate::output::Output;
use crate::process::{Ending, Limits, OrphanSweep, ProcStat, StdoutTo, parse_stat, supervise};
use crate::redact::{LineSplitter, MAX_LINE, REDACTED, Redactor, base64};
use crate::workspace::{check_ref, commit_message, implement_branch};
use crate::{Outcome, Settings, WorkerError, display_url, fence_for, find_program, truncate};

fn words(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|part| (*part).to_owned()).collect()
}

#[test]
fn split_follows_the_shell_for_quotes_and_escapes() {
    let check = |line: &str, expected: &[&str]| assert_eq!(split(line).unwrap(), words(expected), "{line}");
    check("claude -p  --verbose", &["claude", "-p", "--verbose"]);
    check("a 'b c' \"d e\"", &["a", "b c", "d e"]);
    check(r#"a "x\"y\\z\$" 'it''s'"#, &["a", r#"x"y\z$"#, "its"]);
    check(r#"a\ b c\'d"#, &["a b", "c'd"]);
    check(r#""keep \n as is""#, &[r"keep \n as is"]);
    check("'' x \"\"", &["", "x", ""]);
    check("'a|b' \"c;d\" 'e$f'", &["a|b", "c;d", "e$f"]);
    check("  ", &[]);
}

#[test]
fn split_refuses_what_needs_a_shell() {
    assert_eq!(split("a 'b").unwrap_err(), CommandError::UnclosedQuote('\''));
    assert_eq!(split("a \"b").unwrap_err(), CommandError::UnclosedQuote('"'));
    assert_eq!(split("a \\").unwrap_err(), CommandError::TrailingBackslash);
    for (line, c) in
        [("a | b", '|'), ("a && b", '&'), ("a; b", ';'), ("a > f", '>'), ("echo $HOME", '$'), ("$(x)", '$')]
    {
        let err = split(line).unwrap_err();
        assert_eq!(err, CommandError::ShellSyntax(c), "{line}");
        assert!(err.to_string().contains("sh -c"), "{err}");
    }
}

#[test]
fn placeholders_are_filled_after_splitting_so_values_stay_one_argument() {
    let command =
        AgentCommand::parse("agent --kind={kind} -p {prompt} --out {summary_file} '{{literal}}'").unwrap();
    let mut values = PlaceholderValues::default();
    values
        .set("kind", "review")
        .set("prompt", "fix it; rm -rf / --force")
        .set("summary_file", "/w/summary.md");
    assert_eq!(
        command.render(&values),
        words(&[
            "agent",
            "--kind=review",
            "-p",
            "fix it; rm -rf / --force",
            "--out",
            "/w/summary.md",
            "{literal}"
        ])
    );
    assert_eq!(command.to_string(), "agent --kind={kind} -p {prompt} --out {summary_file} {{literal}}");
    // An unset placeholder is empty, not an error at render time.
    assert_eq!(
        AgentCommand::parse("a {branch}").unwrap().render(&PlaceholderValues::default()),
        words(&["a", ""])
    );
}

#[test]
fn bad_placeholders_are_refused_before_anything_runs() {
    let err = AgentCommand::parse("agent {nope}").unwrap_err();
    assert_eq!(err, CommandError::UnknownPlaceholder("nope".into()));
    assert!(err.to_string().contains("{workspace}"), "the message lists the known ones: {err}");
    assert_eq!(AgentCommand::parse("agent {kind").unwrap_err(), CommandError::UnclosedBrace);
    assert_eq!(AgentCommand::parse(" ").unwrap_err(), CommandError::Empty);
}

#[test]
fn redactor_replaces_every_known_secret_longest_first() {
    let redactor = Redactor::new(["ghs_abc123", "ghs_abc123XYZ", "no", ""]);
    assert_eq!(
        redactor.redact_str("t=ghs_abc123XYZ and ghs_abc123."),
        format!("t={REDACTED} and {REDACTED}.")
    );
    assert_eq!(
        redactor.redact_str("no short secrets"),
        "no short secrets",
        "values under 4 bytes are not secrets"
    );
    assert_eq!(Redactor::new(Vec::<String>::new()).redact_str("as is"), "as is");
}

#[test]
fn line_splitter_redacts_secrets_split_across_reads() {
    let redactor = Redactor::new(["SECRET-TOKEN"]);
    let mut splitter = LineSplitter::default();
    let mut lines = splitter.push(b"one SECR", &redactor);
    lines.extend(splitter.push(b"ET-TOKEN two\r\nthree ", &redactor));
    lines.extend(splitter.finish(&redactor));
    let lines: Vec<String> = lines.iter().map(|line| String::from_utf8_lossy(line).into_owned()).collect();
    assert_eq!(lines, ["one *** two", "three "]);
}

#[test]
fn a_secret_straddling_the_cut_of_an_overlong_line_is_still_redacted() {
    let secret = "SECRET-TOKEN-0123456789";
    let redactor = Redactor::new([secret]);
    let mut splitter = LineSplitter::default();
    // The line is cut once it exceeds MAX_LINE; put the secret across that point.
    let mut first = vec![b'x'; MAX_LINE - 5];
    first.extend_from_slice(&secret.as_bytes()[..10]);
    let mut out = splitter.push(&first, &redactor);
    out.extend(splitter.push(&secret.as_bytes()[10..], &redactor));
    out.extend(splitter.push(b" end\n", &redactor));
    let joined: Vec<u8> = out.concat();
    let text = String::from_utf8_lossy(&joined);
    assert!(out.len() >= 2, "the long line was cut");
    assert!(!text.contains("SECRET"), "no part of the secret leaks");
    assert!(text.ends_with("*** end"), "{}", &text[text.len() - 20..]);
}

#[test]
fn base64_matches_rfc_4648() {
    let vectors = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("foobar", "Zm9vYmFy"),
    ];
    for (input, expected) in vectors {
        assert_eq!(base64(input.as_bytes()), expected, "{input}");
    }
    assert_eq!(base64(b"x-access-token:ghs_1"), "eC1hY2Nlc3MtdG9rZW46Z2hzXzE=");
}

fn author() -> Author {
    Author { name: "Berth Bot".into(), email: "bot@example.invalid".into() }
}

#[test]
fn the_token_reaches_git_only_as_a_scoped_header_in_the_environment() {
    let token = Secret::new("ghs_tokenvalue");
    let url = "https://git.example.test/octo/repo.git";
    let env = Git::new(url, Some(&token), &author(), 0).own_env();
    let get = |name: &str| env.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str());
    assert_eq!(get("GIT_CONFIG_KEY_0"), Some("http.https://git.example.test/octo/repo.git.extraHeader"));
    let header = get("GIT_CONFIG_VALUE_0").unwrap();
    assert_eq!(header, format!("Authorization: Basic {}", base64(b"x-access-token:ghs_tokenvalue")));
    assert_eq!(get("GIT_TERMINAL_PROMPT"), Some("0"));
    assert_eq!(get("GIT_AUTHOR_EMAIL"), Some("bot@example.invalid"));
    assert_eq!(get("GIT_COMMITTER_NAME"), Some("Berth Bot"));
    // Every form the header can take is a secret for the redactor.
    let redactor = Redactor::new(token_secrets(&token));
    assert_eq!(redactor.redact_str(header), format!("Authorization: Basic {REDACTED}"));
    assert_eq!(redactor.redact_str("ghs_tokenvalue"), REDACTED);
}

#[test]
fn git_urls_get_no_credentials_and_inherited_git_config_is_kept() {
    let token = Secret::new("ghs_tokenvalue");
    let env = Git::new("git://172.17.0.1:9418/repo.git", Some(&token), &author(), 2).own_env();
    assert!(env.iter().all(|(_, value)| !value.contains("Authorization")));
    let get = |name: &str| env.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone());
    // The worker's own entries come after the two inherited ones.
    assert_eq!(get("GIT_CONFIG_KEY_2").as_deref(), Some("core.hooksPath"));
    assert_eq!(get("GIT_CONFIG_KEY_0"), None);
    let count: usize = get("GIT_CONFIG_COUNT").unwrap().parse().unwrap();
    assert!(count > 2);
    // The agent gets credentials and author, but the repository's hooks stay its business.
    let agent = Git::new("https://h/r.git", Some(&token), &author(), 0).agent_env();
    assert!(agent.iter().any(|(key, value)| key == "GIT_CONFIG_KEY_0" && value.ends_with("extraHeader")));
    assert!(agent.iter().all(|(_, value)| value != "core.hooksPath"));
}

#[test]
fn proc_stat_is_read_past_odd_command_names() {
    let stat = "4242 (we(ird) name) S 17 4242 4242 0 -1 4194560 95 0 0 0";
    assert_eq!(parse_stat(stat), Some(ProcStat { state: 'S', ppid: 17, pgrp: 4242 }));
    assert_eq!(parse_stat("garbage"), None);
}

#[test]
fn refs_that_git_could_take_for_options_or_refspecs_are_refused() {
    for ok in ["main", "feature/x", "refs/pull/7/head", "release-1.2"] {
        assert!(check_ref("BERTH_HEAD_REF", ok).is_ok(), "{ok}");
    }
    for bad in ["-upload-pack=evil", "a b", "main:other", "a..b", "x^", "x~1", "a/", "x.lock", "@{1}"] {
        let err = check_ref("BERTH_HEAD_REF", bad).unwrap_err();
        assert!(err.to_string().starts_with("BERTH_HEAD_REF is invalid"), "{err}");
    }
}

#[test]
fn urls_are_shown_without_credentials() {
    assert_eq!(display_url("https://x-access-token:ghs_1@github.com/o/r.git"), "https://github.com/o/r.git");
    assert_eq!(display_url("https://github.com/o/r.git"), "https://github.com/o/r.git");
    assert_eq!(display_url("file:///srv/repo.git"), "file:///srv/repo.git");
    assert_eq!(display_url("git://h/a@b.git"), "git://h/a@b.git");
}

#[test]
fn summaries_are_fenced_and_bounded() {
    assert_eq!(fence_for("plain"), "```");
    assert_eq!(fence_for("has ```` four"), "`````");
    assert_eq!(truncate("short", 10), "short");
    let long = truncate(&"é".repeat(100), 40);
    assert_eq!(long.chars().count(), 40);
    assert!(long.ends_with("(truncated)"));
}

fn sample_task() -> WorkerTask {
    WorkerTask {
        task_id: TaskId::new("t-1").unwrap(),
        kind: TaskKind::Implement,
        repo: "octo/repo".into(),
        number: 12,
        clone_url: "https://github.com/octo/repo.git".into(),
        head_ref: None,
        head_sha: None,
        prompt: "/berth implement".into(),
        agent_command: "agent".into(),
        deadline_unix: 1_900_000_000,
        token: Some(Secret::new("ghs_tokenvalue")),
    }
}

#[test]
fn settings_default_from_home_and_collect_every_secret() {
    let env: BTreeMap<String, String> =
        [("HOME", "/home/berth"), ("MODEL_KEY", "sk-model-key"), ("GIT_CONFIG_COUNT", "1")]
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .into();
    let options = WorkerOptions {
        secret_vars: vec!["MODEL_KEY".into(), "UNSET_KEY".into()],
        ..WorkerOptions::default()
    };
    let settings = Settings::resolve(&sample_task(), &options, &env);
    assert_eq!(settings.work_dir, std::path::Path::new("/home/berth/work"));
    assert_eq!(settings.grace, crate::DEFAULT_GRACE);
    assert_eq!(settings.author, Author { name: "berth".into(), email: "berth@localhost".into() });
    assert_eq!(settings.inherited_git_config, 1);
    assert!(settings.secrets.contains(&"ghs_tokenvalue".to_owned()));
    assert!(settings.secrets.contains(&"sk-model-key".to_owned()));
    let options =
        WorkerOptions { work_dir: Some("/w".into()), grace_secs: Some(1), ..WorkerOptions::default() };
    let settings = Settings::resolve(&sample_task(), &options, &BTreeMap::new());
    assert_eq!((settings.work_dir.to_str(), settings.grace), (Some("/w"), Duration::from_secs(1)));
}

#[test]
fn the_record_carries_the_status_of_the_exit_and_a_redacted_summary() {
    let redactor = Redactor::new(["ghs_tokenvalue"]);
    let outcome = Outcome {
        exit: WorkerExit::Success,
        summary: "pushed with ghs_tokenvalue".into(),
        branch: Some(implement_branch(12)),
        commit: Some("abc".into()),
    };
    let record = outcome.record("t-1", &redactor);
    assert_eq!(record.status, ResultStatus::Success);
    assert_eq!(record.summary, "pushed with ***");
    assert_eq!(record.branch.as_deref(), Some("berth/issue-12"));
    for (exit, status) in [
        (WorkerExit::AgentFailed, ResultStatus::Failure),
        (WorkerExit::SetupFailed, ResultStatus::SetupFailed),
        (WorkerExit::DeadlineExceeded, ResultStatus::TimedOut),
        (WorkerExit::Cancelled, ResultStatus::Cancelled),
    ] {
        assert_eq!(Outcome::new(exit, "x").record("t-1", &redactor).status, status);
    }
}

#[test]
fn the_commit_message_names_the_issue_and_the_task() {
    let message = commit_message(&sample_task());
    assert!(message.starts_with("berth: implement #12\n\n"), "{message}");
    assert!(message.contains("octo/repo#12") && message.contains("berth task t-1"), "{message}");
}

fn limits(deadline_in: Duration, grace: Duration, cancel: CancellationToken) -> Limits {
    Limits { deadline: Instant::now() + deadline_in, grace, cancel, sweep: OrphanSweep::Disabled }
}

fn sh(script: &str) -> Command {
    let mut command = Command::new("sh");
    command.args(["-c", script]);
    command
}

#[tokio::test]
async fn a_child_that_exits_reports_its_status_and_output() {
    let output = Output::new(Redactor::new(["hidden-value"]));
    let limits = limits(Duration::from_secs(30), Duration::from_secs(1), CancellationToken::new());
    let finished = supervise(
        &mut sh("echo out; echo 'err hidden-value' >&2; exit 3"),
        StdoutTo::Capture,
        &limits,
        &output,
    )
    .await
    .unwrap();
    assert!(matches!(finished.ending, Ending::Exited(status) if status.code() == Some(3)));
    assert_eq!(finished.stdout, b"out\n");
    assert_eq!(finished.tail, ["err ***"], "stderr is kept redacted for messages");
    assert!(!finished.killed_after_grace);
    assert_eq!(finished.survivors, 0);
}

#[tokio::test]
async fn past_the_deadline_a_group_that_ignores_sigterm_is_killed_after_the_grace() {
    let output = Output::new(Redactor::default());
    let grace = Duration::from_millis(300);
    let limits = limits(Duration::from_millis(200), grace, CancellationToken::new());
    let started = std::time::Instant::now();
    // The shell and its sleep both ignore SIGTERM (an ignored signal stays ignored across exec).
    let finished =
        supervise(&mut sh("trap '' TERM; sleep 30; echo never"), StdoutTo::Stream, &limits, &output)
            .await
            .unwrap();
    let took = started.elapsed();
    assert_eq!(finished.ending, Ending::DeadlinePassed);
    assert!(finished.killed_after_grace);
    assert_eq!(finished.survivors, 0, "nothing of the group is left");
    assert!(took >= Duration::from_millis(500), "deadline plus grace: {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test]
async fn cancellation_stops_a_polite_child_at_once() {
    let output = Output::new(Redactor::default());
    let cancel = CancellationToken::new();
    cancel.cancel();
    let limits = limits(Duration::from_secs(30), Duration::from_secs(20), cancel);
    let started = std::time::Instant::now();
    let finished = supervise(&mut sh("exec sleep 30"), StdoutTo::Stream, &limits, &output).await.unwrap();
    assert_eq!(finished.ending, Ending::Cancelled);
    assert!(!finished.killed_after_grace, "sleep dies on SIGTERM");
    assert!(started.elapsed() < Duration::from_secs(10), "no waiting out the grace: {:?}", started.elapsed());
}

#[test]
fn the_prompt_gets_the_paths_and_keeps_every_other_brace() {
    let mut values = PlaceholderValues::default();
    values.set("summary_file", "/home/berth/work/summary.md").set("prompt", "never inlined");
    // What the daemon sends: its own data with doubled braces, the worker's paths as placeholders.
    let daemon = "Write to {summary_file}. Data: {{summary_file}} {{\"a\": 1}} {prompt}";
    assert_eq!(
        render_text(daemon, &values),
        "Write to /home/berth/work/summary.md. Data: {summary_file} {\"a\": 1} {prompt}"
    );
    // Text that was never a template passes through unchanged.
    for raw in ["fn main() { println!(\"{}\", 1); }", "{unknown} and { and }", "trailing {"] {
        assert_eq!(render_text(raw, &values), raw, "{raw}");
    }
}

#[test]
fn a_missing_agent_program_is_named_before_anything_is_cloned() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().to_str().expect("utf-8 path").to_owned();
    let missing = find_program("claude", &path).expect_err("nothing is on that PATH");
    assert!(matches!(&missing, WorkerError::AgentMissing { program, .. } if program == "claude"));
    let text = missing.to_string();
    assert!(text.contains("\"claude\" is not in the worker image") && text.contains(&path), "{text}");
    assert!(find_program("/no/such/agent", &path).is_err());
    assert!(find_program("sh", "/usr/bin:/bin").is_ok());
    let plain = dir.path().join("agent");
    std::fs::write(&plain, "not executable").expect("write");
    assert!(find_program("agent", &path).is_err(), "a file without an execute bit is not a program");
}
