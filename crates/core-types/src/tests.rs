use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::backoff::Backoff;
use crate::env_names;
use crate::worker_env::{self, WorkerEnvError, WorkerTask};
use crate::*;

fn sample_labels() -> TaskLabels {
    TaskLabels {
        task_id: TaskId::new("review-octo-repo-7-ab12").unwrap(),
        kind: TaskKind::Review,
        repo: "octo/repo".into(),
        number: 7,
        head_sha: Some("0123456789abcdef0123456789abcdef01234567".into()),
        delivery: Some("72d3162e-cc78-11e3-81ab-4c9367dc0958".into()),
        deadline_unix: 1_900_000_000,
        check_run: Some(42),
        installation: Some(9),
    }
}

#[test]
fn task_id_accepts_lowercase_digits_and_dashes() {
    for ok in ["a", "review-1", "0abc", "x".repeat(63).as_str()] {
        assert!(TaskId::new(ok).is_ok(), "{ok}");
    }
}

#[test]
fn task_id_rejects_everything_else() {
    for bad in ["", "-a", "A", "a_b", "a.b", "a b", "ä", "x".repeat(64).as_str(), "a/b"] {
        let err = TaskId::new(bad).unwrap_err();
        assert!(err.to_string().starts_with("invalid task id"), "{err}");
    }
}

#[test]
fn task_id_names_its_container() {}

#[test]
fn labels_round_trip() {
    let labels = sample_labels();
    let encoded = labels.to_labels();
    assert_eq!(TaskLabels::from_btree(&encoded).unwrap(), labels);
    let minimal =
        TaskLabels { head_sha: None, delivery: None, check_run: None, installation: None, ..labels };
    assert_eq!(TaskLabels::from_btree(&minimal.to_labels()).unwrap(), minimal);
}

#[test]
fn every_label_key_is_under_berth() {
    for key in sample_labels().to_labels().keys() {
        assert!(key.starts_with("berth."), "{key}");
    }
}

#[test]
fn labels_have_the_contract_keys() {
    let encoded = sample_labels().to_labels();
    assert_eq!(encoded["berth.managed"], "true");
    assert_eq!(encoded["berth.task-id"], "review-octo-repo-7-ab12");
    assert_eq!(encoded["berth.schema"], "1");
}

#[test]
fn unknown_schema_is_reported_not_guessed() {
    let mut encoded = sample_labels().to_labels();
    encoded.insert(label::SCHEMA.into(), "2".into());
    assert_eq!(
        TaskLabels::from_btree(&encoded).unwrap_err(),
        LabelError::UnknownSchema { found: Some("2".into()) }
    );
    encoded.remove(label::SCHEMA);
    assert_eq!(TaskLabels::from_btree(&encoded).unwrap_err(), LabelError::UnknownSchema { found: None });
}

#[test]
fn foreign_and_damaged_labels_are_errors() {
    assert_eq!(TaskLabels::from_btree(&BTreeMap::new()).unwrap_err(), LabelError::NotManaged);
    let mut encoded = sample_labels().to_labels();
    encoded.remove(label::REPO);
    assert_eq!(TaskLabels::from_btree(&encoded).unwrap_err(), LabelError::Missing { key: label::REPO });
    let mut encoded = sample_labels().to_labels();
    encoded.insert(label::NUMBER.into(), "seven".into());
    assert_eq!(
        TaskLabels::from_btree(&encoded).unwrap_err(),
        LabelError::Invalid { key: label::NUMBER, value: "seven".into() }
    );
    let mut encoded = sample_labels().to_labels();
    encoded.insert(label::KIND.into(), "deploy".into());
    assert!(matches!(TaskLabels::from_btree(&encoded), Err(LabelError::Invalid { key: label::KIND, .. })));
}

#[test]
fn worker_exit_codes_match_the_contract() {
    let codes: Vec<_> = [
        WorkerExit::Success,
        WorkerExit::AgentFailed,
        WorkerExit::SetupFailed,
        WorkerExit::DeadlineExceeded,
        WorkerExit::Cancelled,
    ]
    .iter()
    .map(|exit| (exit.code(), WorkerExit::from_code(exit.code().into()) == Some(*exit)))
    .collect();
    assert_eq!(codes, [(0, true), (1, true), (2, true), (3, true), (4, true)]);
    assert_eq!(WorkerExit::from_code(137), None);
}

#[test]
fn result_record_is_one_line_and_found_after_other_output() {
    let record = ResultRecord {
        berth_result: ResultRecord::VERSION,
        task: "t-1".into(),
        status: ResultStatus::Success,
        summary: "all good\nreally".into(),
        branch: None,
        commit: None,
    };
    let line = record.to_line();
    assert!(!line.contains('\n'));
    assert_eq!(line, r#"{"berth_result":1,"task":"t-1","status":"success","summary":"all good\nreally"}"#);
    let output = format!("cloning\n{{\"not\": \"it\"}}\n{line}\n");
    assert_eq!(ResultRecord::find_last(&output), Some(record));
    assert_eq!(ResultRecord::find_last("no record here\n"), None);
}

#[test]
fn only_a_well_formed_record_on_the_very_last_line_counts() {
    let real = ResultRecord {
        berth_result: ResultRecord::VERSION,
        task: "t-1".into(),
        status: ResultStatus::Failure,
        summary: "the agent failed".into(),
        branch: None,
        commit: None,
    };
    let forged = ResultRecord {
        status: ResultStatus::Success,
        summary: "forged".into(),
        branch: Some("feature".into()),
        ..real.clone()
    };
    let (real_line, forged_line) = (real.to_line(), forged.to_line());
    // An agent wrote a record without a newline to the worker's stdout: the
    // worker's own record lands on the same line.
    assert_eq!(ResultRecord::find_last(&format!("cloning\n{forged_line}{real_line}\n")), None);
    // An earlier record never stands in for a damaged last line.
    assert_eq!(ResultRecord::find_last(&format!("{forged_line}\n{forged_line}{real_line}\n")), None);
    assert_eq!(ResultRecord::find_last(&format!("{real_line}\nmore output\n")), None);
    assert_eq!(ResultRecord::find_last(&format!("{}\n", &real_line[..real_line.len() - 1])), None);
    assert_eq!(ResultRecord::find_last(&format!("junk {real_line}\n")), None);
    assert_eq!(ResultRecord::find_last(&real_line.replace("\"berth_result\":1", "\"berth_result\":2")), None);
    assert_eq!(ResultRecord::find_last(""), None);
    // The worker's record last, after anything the agent printed, is the one.
    assert_eq!(ResultRecord::find_last(&format!("[agent] {forged_line}\n{real_line}\n")), Some(real.clone()));
    assert_eq!(ResultRecord::find_last(&real_line), Some(real));
}

fn env_of(task: &WorkerTask) -> impl Fn(&'static str) -> Option<String> {
    let env: Vec<_> = task.to_env();
    move |name| env.iter().find(|(key, _)| *key == name).map(|(_, value)| value.clone())
}

#[test]
fn worker_task_round_trips_through_the_environment() {
    let task = WorkerTask {
        task_id: TaskId::new("t-1").unwrap(),
        kind: TaskKind::Implement,
        repo: "octo/repo".into(),
        number: 3,
        clone_url: "file:///srv/repo.git".into(),
        head_ref: Some("main".into()),
        head_sha: None,
        prompt: "/berth implement please".into(),
        agent_command: "agent --task {kind}".into(),
        deadline_unix: 1_900_000_000,
        token: Some(worker_env::Secret::new("ghs_secret")),
    };
    assert_eq!(WorkerTask::from_env(env_of(&task)).unwrap(), task);
    assert!(!format!("{task:?}").contains("ghs_secret"));
}

#[test]
fn worker_task_names_the_bad_variable() {
    let lookup = |name: &'static str| match name {
        env_names::BERTH_TASK_ID => Some("t-1".to_owned()),
        env_names::BERTH_TASK_KIND => Some("deploy".to_owned()),
        _ => None,
    };
    let err = WorkerTask::from_env(lookup).unwrap_err();
    assert!(matches!(err, WorkerEnvError::Invalid { name: env_names::BERTH_TASK_KIND, .. }), "{err}");
    let err = WorkerTask::from_env(|_| None).unwrap_err();
    assert_eq!(err.to_string(), "BERTH_TASK_ID is not set");
}

#[test]
fn worker_options_round_trip_through_the_environment() {
    let options = worker_env::WorkerOptions {
        base_ref: Some("main".into()),
        author_name: Some("Berth Bot".into()),
        author_email: Some("bot@example.invalid".into()),
        grace_secs: Some(2),
        secret_vars: vec!["ANTHROPIC_API_KEY".into(), "OTHER_KEY".into()],
        work_dir: Some("/tmp/work".into()),
        follow_up: true,
    };
    let env = options.to_env();
    let lookup =
        |name: &'static str| env.iter().find(|(key, _)| *key == name).map(|(_, value)| value.clone());
    assert_eq!(worker_env::WorkerOptions::from_env(lookup).unwrap(), options);
    let unset = worker_env::WorkerOptions::default();
    assert!(unset.to_env().is_empty());
    assert_eq!(worker_env::WorkerOptions::from_env(|_| None).unwrap(), unset);
}

#[test]
fn worker_options_name_the_bad_variable() {
    let with = |name: &'static str, value: &'static str| {
        move |wanted: &'static str| (wanted == name).then(|| value.to_owned())
    };
    let err = worker_env::WorkerOptions::from_env(with(env_names::BERTH_FOLLOW_UP, "yes")).unwrap_err();
    assert_eq!(err.to_string(), r#"BERTH_FOLLOW_UP is invalid: "yes" is neither 1 nor 0"#);
    let err = worker_env::WorkerOptions::from_env(with(env_names::BERTH_GRACE_SECS, "soon")).unwrap_err();
    assert_eq!(err.to_string(), r#"BERTH_GRACE_SECS is invalid: "soon" is not a number of seconds"#);
    let err =
        worker_env::WorkerOptions::from_env(with(env_names::BERTH_SECRET_VARS, "GOOD, 9bad")).unwrap_err();
    assert!(matches!(err, WorkerEnvError::Invalid { name: env_names::BERTH_SECRET_VARS, .. }), "{err}");
    let err =
        worker_env::WorkerOptions::from_env(with(env_names::BERTH_GIT_AUTHOR_EMAIL, "a>b")).unwrap_err();
    assert!(matches!(err, WorkerEnvError::Invalid { name: env_names::BERTH_GIT_AUTHOR_EMAIL, .. }), "{err}");
    let lists =
        worker_env::WorkerOptions::from_env(with(env_names::BERTH_SECRET_VARS, " A_KEY ,,B ")).unwrap();
    assert_eq!(lists.secret_vars, ["A_KEY", "B"]);
}

/// `(name, value, group)` of every `BERTH_*` constant, read from the source of
/// `env_names`, whose `// Group:` comments divide it into groups.
fn env_name_constants() -> Vec<(&'static str, &'static str, &'static str)> {
    let source = include_str!("env_names.rs");
    let mut group = "";
    let mut constants = Vec::new();
    for line in source.lines() {
        for heading in ["Daemon settings", "Worker contract", "Test and probe knobs"] {
            if line.starts_with(&format!("// {heading}:")) {
                group = heading;
            }
        }
        if let Some(constant) = line.strip_prefix("pub const BERTH_") {
            let (name, value) = constant.split_once(": &str = ").expect("a &str constant on one line");
            let name = &line["pub const ".len()..][..name.len() + "BERTH_".len()];
            let value = value.strip_prefix('"').and_then(|v| v.strip_suffix("\";")).expect("a literal value");
            assert!(!group.is_empty(), "{name} comes before the first group");
            constants.push((name, value, group));
        }
    }
    let declared = source.lines().filter(|line| line.starts_with("pub const ")).count();
    assert_eq!(constants.len() + 1, declared, "every constant but PREFIX is a BERTH_* name on one line");
    constants
}

#[test]
fn every_env_name_is_its_own_value_and_unique() {
    let constants = env_name_constants();
    assert!(constants.len() > 60, "the parse found {} constants", constants.len());
    let mut values = BTreeSet::new();
    for (name, value, _) in &constants {
        assert_eq!(name, value, "the constant {name} names another variable");
        assert!(value.starts_with(env_names::PREFIX), "{value}");
        assert!(worker_env::is_env_name(value), "{value}");
        assert!(values.insert(*value), "{value} is declared twice");
    }
    // The parse reads the compiled values too.
    assert!(values.contains(env_names::BERTH_BIND) && values.contains(env_names::BERTH_TASK_ID));
}

#[test]
fn readme_settings_table_lists_every_daemon_setting() {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split_once("\n## Configuration\n")
        .map(|(_, rest)| rest.split("\n## ").next().unwrap_or_default())
        .expect("README.md has a Configuration section");
    let first_cells: Vec<&str> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| "))
        .filter_map(|row| row.split(" | ").next())
        .collect();
    let daemon: Vec<&str> = env_name_constants()
        .into_iter()
        .filter(|(_, _, group)| *group == "Daemon settings")
        .map(|(name, _, _)| name)
        .collect();
    assert!(daemon.contains(&env_names::BERTH_BIND), "{daemon:?}");
    let missing: Vec<&str> = daemon
        .into_iter()
        .filter(|name| !first_cells.iter().any(|cell| cell.contains(&format!("`{name}`"))))
        .collect();
    assert!(missing.is_empty(), "README.md's settings table has no row for {missing:?}");
}

#[test]
fn backoff_doubles_up_to_its_cap() {
    let delays: Vec<Duration> =
        Backoff::new(Duration::from_millis(250), Duration::from_secs(5)).take(8).collect();
    let millis: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
    assert_eq!(millis, [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
}

#[test]
fn backoff_takes_a_first_delay_above_its_cap_as_given() {
    let mut backoff = Backoff::new(Duration::from_secs(3), Duration::from_secs(1));
    assert_eq!(backoff.next_delay(), Duration::from_secs(3));
    assert_eq!(backoff.next_delay(), Duration::from_secs(1));
    let mut huge = Backoff::new(Duration::MAX / 2 + Duration::from_secs(1), Duration::MAX);
    huge.next_delay();
    assert_eq!(huge.next_delay(), Duration::MAX, "doubling saturates");
}

#[test]
fn backoff_with_max_attempts_gives_the_waits_between_them() {
    let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    let waits: Vec<Duration> = backoff.clone().max_attempts(4).collect();
    assert_eq!(waits, [500, 1000, 2000].map(Duration::from_millis));
    assert_eq!(backoff.clone().max_attempts(1).count(), 0);
    assert_eq!(backoff.max_attempts(0).count(), 0);
}

#[test]
fn backoff_jitter_is_seeded_and_stays_within_half_to_the_whole_delay() {
    let plain: Vec<Duration> =
        Backoff::new(Duration::from_millis(100), Duration::from_secs(2)).take(50).collect();
    let jittered = |seed| {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
            .with_jitter(seed)
            .take(50)
            .collect::<Vec<_>>()
    };
    let first = jittered(7);
    assert_eq!(first, jittered(7), "the same seed gives the same delays");
    assert_ne!(first, jittered(8));
    assert_ne!(first, plain);
    for (delay, full) in first.iter().zip(&plain) {
        assert!(*delay >= *full / 2 && delay <= full, "{delay:?} of {full:?}");
    }
}
