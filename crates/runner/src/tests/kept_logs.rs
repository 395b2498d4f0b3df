//! The end of a finished worker's output, kept after its container is gone.

use std::time::Duration;

use core_types::TaskKind;
use dispatcher::Program;
use domain::tasks::Conclusion;

use super::harness::{Rig, config, record_line};
use crate::{LogKeeper, RunnerConfig, logs};

fn keeping(keeper: LogKeeper) -> RunnerConfig {
    RunnerConfig { log_keeper: Some(keeper), ..config() }
}

#[tokio::test(start_paused = true)]
async fn a_finished_tasks_log_is_kept_cut_to_its_limit_with_the_cut_recorded() {
    let state = tempfile::tempdir().unwrap();
    let keeper = LogKeeper::under(state.path(), 1024);
    let mut rig = Rig::new(keeping(keeper.clone())).await;
    let filler: String = (0..400).map(|n| format!("step {n:04}\n")).collect();
    let output = format!("{filler}{}\n", record_line("All good."));
    rig.engine
        .set_default_program(Program::exit_after(Duration::from_secs(5), 0).with_stdout(output.clone()));
    let task = rig.submit(TaskKind::Review, "octo/repo", 1).await;
    let record = rig.reported(&task).await;
    assert_eq!(record.conclusion(), Some(Conclusion::Success));
    assert!(rig.engine.containers().is_empty(), "the container is removed");

    let kept = logs::read_kept(&keeper.dir, &task).unwrap().expect("the task's log is kept");
    assert_eq!(kept.text.len(), 1024, "cut to the limit");
    assert!(output.ends_with(&kept.text), "the end of the output is kept");
    assert_eq!(kept.cut, (output.len() - 1024) as u64, "the bytes left out are recorded");
    let mode = std::fs::metadata(logs::log_path(&keeper.dir, &task)).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
    assert_eq!(std::fs::read_dir(&keeper.dir).unwrap().count(), 1, "no temporary file is left");
}

/// A check run shows the last lines of a kept log, read from its end only:
/// whole lines, never the header, and the same as the whole file's end.
#[test]
fn the_end_of_a_kept_log_is_read_from_a_line_start_without_the_header() {
    let state = tempfile::tempdir().unwrap();
    let keeper = LogKeeper::under(state.path(), 1 << 20);
    let task = core_types::TaskId::new("t-end").unwrap();
    assert_eq!(logs::read_kept_end(&keeper.dir, &task, 64).unwrap(), None, "none kept");
    let text: String = (0..1000).map(|n| format!("line {n:04}\n")).collect();
    keeper.write(&task, &text, 77).unwrap();
    // Whole: the header is left out.
    assert_eq!(logs::read_kept_end(&keeper.dir, &task, 1 << 20).unwrap().unwrap(), text);
    // An end that starts inside a line starts at the next one.
    for max in [1, 10, 11, 12, 100, 5000] {
        let end = logs::read_kept_end(&keeper.dir, &task, max).unwrap().unwrap();
        assert!(text.ends_with(&end), "max {max}: {end:?}");
        assert!(end.starts_with("line ") || end.len() == max, "max {max}: {end:?}");
        assert!(end.len() <= max && end.len() + 10 > max.min(text.len()), "max {max}: {} bytes", end.len());
    }
    // A last line longer than the end read: its end is shown, not nothing,
    // and a character cut in two at the start is left out.
    let long = core_types::TaskId::new("t-long").unwrap();
    let text = format!("first\n{}\n", "é".repeat(40_000));
    keeper.write(&long, &text, 0).unwrap();
    let end = logs::read_kept_end(&keeper.dir, &long, 1001).unwrap().unwrap();
    assert!(text.ends_with(&end) && end.starts_with('é') && end.len() >= 998, "{} bytes", end.len());
    // A log that is only the header and nothing after it.
    let empty = core_types::TaskId::new("t-empty").unwrap();
    keeper.write(&empty, "", 0).unwrap();
    assert_eq!(logs::read_kept_end(&keeper.dir, &empty, 1 << 20).unwrap().unwrap(), "");
}

#[tokio::test(start_paused = true)]
async fn a_short_log_is_kept_whole_and_a_zero_limit_keeps_none() {
    let state = tempfile::tempdir().unwrap();
    let keeper = LogKeeper::under(state.path(), 1 << 20);
    let mut rig = Rig::new(keeping(keeper.clone())).await;
    let task = rig.submit(TaskKind::Review, "octo/repo", 1).await;
    rig.reported(&task).await;
    let kept = logs::read_kept(&keeper.dir, &task).unwrap().expect("the task's log is kept");
    assert_eq!((kept.text, kept.cut), (format!("{}\n", record_line("All good.")), 0));

    let none = LogKeeper::under(&state.path().join("none"), 0);
    let mut rig = Rig::new(keeping(none.clone())).await;
    let task = rig.submit(TaskKind::Review, "octo/repo", 2).await;
    rig.reported(&task).await;
    assert_eq!(logs::read_kept(&none.dir, &task).unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn a_log_dir_that_cannot_be_written_still_lets_the_task_be_reported() {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    // A directory under a regular file can never be made.
    let keeper = LogKeeper::under(&file, 1024);
    let mut rig = Rig::new(keeping(keeper.clone())).await;
    let task = rig.submit(TaskKind::Review, "octo/repo", 1).await;
    let record = rig.reported(&task).await;
    assert_eq!(record.conclusion(), Some(Conclusion::Success));
    assert_eq!(rig.completions(&task), [("success".to_owned(), "Review done".to_owned())]);
    assert!(rig.engine.containers().is_empty(), "the container is removed all the same");
    assert!(!logs::log_path(&keeper.dir, &task).exists());
}

#[tokio::test(start_paused = true)]
async fn every_secret_the_daemon_read_is_redacted_from_the_kept_log() {
    let state = tempfile::tempdir().unwrap();
    let secrets = state.path().join("secrets.env");
    std::fs::write(&secrets, "AGENT_API_KEY=sk-kept-log-secret-0123456789\n").unwrap();
    let keeper = LogKeeper::under(state.path(), 1 << 20);
    let mut config = keeping(keeper.clone());
    config.agent_env_files.secrets_file = Some(secrets);
    let mut rig = Rig::new(config).await;
    let output = format!("key is sk-kept-log-secret-0123456789 here\n{}\n", record_line("All good."));
    rig.engine.set_default_program(Program::exit_after(Duration::from_secs(5), 0).with_stdout(output));
    let task = rig.submit(TaskKind::Review, "octo/repo", 1).await;
    rig.reported(&task).await;
    let kept = logs::read_kept(&keeper.dir, &task).unwrap().expect("the task's log is kept");
    assert!(kept.text.starts_with("key is *** here\n"), "{}", kept.text);
    assert!(!kept.text.contains("sk-kept-log-secret"), "{}", kept.text);
}

#[test]
fn old_logs_are_pruned_and_new_ones_stay() {
    let state = tempfile::tempdir().unwrap();
    let keeper = LogKeeper::under(state.path(), 1024);
    let task = core_types::TaskId::new("t-1").unwrap();
    keeper.write(&task, "output\n", 0).unwrap();
    assert_eq!(logs::prune(&keeper.dir, Duration::from_secs(3600)).unwrap(), 0);
    assert!(logs::read_kept(&keeper.dir, &task).unwrap().is_some());
    assert_eq!(logs::prune(&keeper.dir, Duration::ZERO).unwrap(), 1);
    assert_eq!(logs::read_kept(&keeper.dir, &task).unwrap(), None);
    assert_eq!(logs::prune(&state.path().join("missing"), Duration::ZERO).unwrap(), 0);
}

/// Redaction copies only where a secret is, and still replaces the longest
/// first, so a secret inside another leaves no part of the longer one.
#[test]
fn redaction_replaces_the_longest_secret_first_and_leaves_a_clean_text_as_it_was() {
    let env = crate::agent_env::AgentEnv {
        plain: Vec::new(),
        secrets: vec![
            ("SHORT".to_owned(), core_types::Secret::new("token-1234567890".to_owned())),
            ("LONG".to_owned(), core_types::Secret::new("prefix-token-1234567890-suffix".to_owned())),
        ],
    };
    assert_eq!(
        env.redact("a prefix-token-1234567890-suffix b token-1234567890 c"),
        "a *** b *** c",
        "the longer secret goes whole, then the shorter"
    );
    let clean = "nothing secret here\n".repeat(1000);
    let pointer = clean.as_ptr();
    let redacted = env.redact_owned(clean);
    assert_eq!(redacted.as_ptr(), pointer, "a text with no secret is not copied");
    assert_eq!(redacted, "nothing secret here\n".repeat(1000));
}
