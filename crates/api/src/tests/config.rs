use std::time::Duration;

use clap::Parser;

use crate::config::{Cli, Command, ServeArgs, parse_duration, parse_size};

fn serve_args(extra: &[&str]) -> ServeArgs {
    let key = super::test_key();
    let mut args = vec![
        "berth".to_owned(),
        "serve".to_owned(),
        "--webhook-secret=s3cret-value-of-16-plus".to_owned(),
        "--github-app-id=1".to_owned(),
        format!("--github-private-key-file={}", key.display()),
    ];
    // A flag given in `extra` replaces the base one.
    args.retain(|arg| !extra.iter().any(|extra| arg.split('=').next() == extra.split('=').next()));
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    match Cli::try_parse_from(args).unwrap().command {
        Command::Serve(args) => *args,
        other => panic!("parsed {other:?}"),
    }
}

#[test]
fn defaults_validate_to_the_contract_values() {
    let config = serve_args(&[]).validate().unwrap();
    assert_eq!(config.bind.to_string(), "127.0.0.1:8080");
    assert_eq!(config.max_workers, 4);
    assert_eq!(config.worker_memory_bytes, 2 * 1024 * 1024 * 1024);
    assert_eq!(config.worker_nano_cpus, 2_000_000_000);
    assert_eq!(config.task_timeout, Duration::from_secs(1800));
    assert_eq!(config.worker_network, "bridge");
    assert_eq!(config.github_api_url, "https://api.github.com");
    assert!(config.admin_token.is_none());
    assert!(!format!("{config:?}").contains("s3cret-value-of-16-plus"), "secrets are redacted in Debug");
}

#[test]
fn each_bad_setting_is_named() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bind=nowhere"], "BERTH_BIND"),
        (&["--bind=0.0.0.0:8080"], "BERTH_BIND"),
        (&["--max-workers=0"], "BERTH_MAX_WORKERS"),
        (&["--worker-memory=lots"], "BERTH_WORKER_MEMORY"),
        (&["--worker-memory=1k"], "BERTH_WORKER_MEMORY"),
        (&["--worker-cpus=-1"], "BERTH_WORKER_CPUS"),
        (&["--task-timeout=soon"], "BERTH_TASK_TIMEOUT"),
        (&["--task-timeout=0s"], "BERTH_TASK_TIMEOUT"),
        (&["--worker-scratch-size=1k"], "BERTH_WORKER_SCRATCH_SIZE"),
        (&["--worker-scratch-size=lots"], "BERTH_WORKER_SCRATCH_SIZE"),
        (&["--max-workers-per-repo=0"], "BERTH_MAX_WORKERS_PER_REPO"),
        (&["--max-workers-per-repo=two"], "BERTH_MAX_WORKERS_PER_REPO"),
        (&["--github-app-id=abc"], "BERTH_GITHUB_APP_ID"),
        (&["--github-api-url=ftp://x"], "BERTH_GITHUB_API_URL"),
        (&["--admin-token=short"], "BERTH_ADMIN_TOKEN"),
        (&["--allowed-repos=octo/repo,bad repo"], "BERTH_ALLOWED_REPOS"),
        (&["--log-format=xml"], "BERTH_LOG_FORMAT"),
        (&["--delivery-retention=1h"], "BERTH_DELIVERY_RETENTION"),
        (&["--log-keep=lots"], "BERTH_LOG_KEEP"),
        (&["--log-keep=5tb"], "BERTH_LOG_KEEP"),
        (&["--log-retention=soon"], "BERTH_LOG_RETENTION"),
        (&["--log-retention=0"], "BERTH_LOG_RETENTION"),
        (&["--task-retention=soon"], "BERTH_TASK_RETENTION"),
        (&["--task-retention=30w"], "BERTH_TASK_RETENTION"),
        (&["--task-retention=0"], "BERTH_TASK_RETENTION"),
        (&["--worker-network=host"], "BERTH_WORKER_NETWORK"),
        (&["--clone-cache=maybe"], "BERTH_CLONE_CACHE"),
        (&["--clone-cache-size=lots"], "BERTH_CLONE_CACHE_SIZE"),
        (&["--clone-cache-size=0"], "BERTH_CLONE_CACHE_SIZE"),
        (&["--github-private-key-file=/nonexistent/key.pem"], "BERTH_GITHUB_PRIVATE_KEY_FILE"),
        (&["--stop-grace=2s"], "BERTH_STOP_GRACE"),
        (&["--stop-grace=0"], "BERTH_STOP_GRACE"),
        (&["--stop-grace=soon"], "BERTH_STOP_GRACE"),
    ];
    for (extra, setting) in cases {
        let err = serve_args(extra).validate().unwrap_err();
        assert_eq!(err.setting, *setting, "{extra:?}: {err}");
        let line = err.to_string();
        assert!(!line.contains('\n') && line.contains(setting), "{line}");
    }
    assert!(serve_args(&["--bind=0.0.0.0:8080", "--allow-public-bind"]).validate().is_ok());
    assert!(serve_args(&["--stop-grace=3s"]).validate().is_ok());
}

#[test]
fn cancel_names_a_missing_token_and_a_bad_address() {
    let cancel = |extra: &[&str]| {
        let mut args = vec!["berth", "cancel", "task-1"];
        args.extend_from_slice(extra);
        match Cli::try_parse_from(args).unwrap().command {
            Command::Cancel(args) => args.validate(),
            other => panic!("not cancel: {other:?}"),
        }
    };
    let err = cancel(&[]).unwrap_err();
    assert_eq!(err.setting, "BERTH_ADMIN_TOKEN", "{err}");
    assert!(err.to_string().contains("BERTH_ADMIN_TOKEN_FILE"), "{err}");
    assert_eq!(cancel(&["--admin-token=short"]).unwrap_err().setting, "BERTH_ADMIN_TOKEN");
    let token = "--admin-token=a-long-enough-admin-token";
    assert_eq!(cancel(&[token, "--bind=nonsense"]).unwrap_err().setting, "BERTH_BIND");
    let target = cancel(&[token, "--bind=0.0.0.0:9000"]).unwrap();
    assert_eq!(target.addr.to_string(), "127.0.0.1:9000", "asked on loopback");
}

#[test]
fn kept_logs_default_to_5_mib_for_14_days_and_0_keeps_none() {
    let config = serve_args(&[]).validate().unwrap();
    assert_eq!((config.log_keep_bytes, config.log_retention), (5 << 20, Duration::from_secs(14 * 86_400)));
    let config = serve_args(&["--log-keep=0", "--log-retention=2h"]).validate().unwrap();
    assert_eq!((config.log_keep_bytes, config.log_retention), (0, Duration::from_secs(7200)));
    assert_eq!(serve_args(&["--log-keep=64k"]).validate().unwrap().log_keep_bytes, 64 << 10);
}

#[test]
fn tasks_are_kept_30_days_and_never_for_less_than_logs_or_deliveries() {
    let config = serve_args(&[]).validate().unwrap();
    assert_eq!(config.task_retention, Duration::from_secs(30 * 86_400));
    let config = serve_args(&["--task-retention=14d"]).validate().unwrap();
    assert_eq!(config.task_retention, config.log_retention, "as long as the kept logs is enough");
    let config = serve_args(&["--task-retention=4d", "--log-retention=2h"]).validate().unwrap();
    assert_eq!(config.task_retention, Duration::from_secs(4 * 86_400));

    let err = serve_args(&["--task-retention=7d"]).validate().unwrap_err();
    assert_eq!(err.setting, "BERTH_TASK_RETENTION", "{err}");
    let line = err.to_string();
    assert!(!line.contains('\n') && line.contains("shorter than BERTH_LOG_RETENTION (14d)"), "{line}");
    let err = serve_args(&["--task-retention=90d", "--log-retention=91d"]).validate().unwrap_err();
    assert_eq!(err.setting, "BERTH_TASK_RETENTION", "{err}");

    let err = serve_args(&["--task-retention=2d", "--log-retention=1d"]).validate().unwrap_err();
    assert_eq!(err.setting, "BERTH_TASK_RETENTION", "{err}");
    let line = err.to_string();
    assert!(!line.contains('\n') && line.contains("shorter than BERTH_DELIVERY_RETENTION (72h)"), "{line}");
}

#[test]
fn the_clone_cache_is_on_without_a_cap_by_default_and_off_on_an_engine_without_volumes() {
    let config = serve_args(&[]).validate().unwrap();
    assert!(config.clone_cache);
    assert_eq!(config.clone_cache_size, None);
    let settings = crate::daemon::clone_cache_settings(&config, true).expect("on with volumes");
    assert_eq!(settings.size_cap, None);
    assert_eq!(settings.state_dir, config.state_dir);
    assert_eq!(crate::daemon::clone_cache_settings(&config, false), None, "off without volumes");
    let config = serve_args(&["--clone-cache=off", "--clone-cache-size=20g"]).validate().unwrap();
    assert!(!config.clone_cache);
    assert_eq!(config.clone_cache_size, Some(20 << 30));
    assert_eq!(crate::daemon::clone_cache_settings(&config, true), None, "off when turned off");
}

#[test]
fn a_missing_secret_is_named() {
    let args = Cli::try_parse_from(["berth", "serve", "--github-app-id=1"]).unwrap();
    let Command::Serve(args) = args.command else { panic!() };
    let err = args.validate().unwrap_err();
    assert_eq!(err.setting, "BERTH_WEBHOOK_SECRET");
}

#[test]
fn durations_and_sizes_read_human_forms() {
    assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
    assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    assert_eq!(parse_duration("3d"), Ok(Duration::from_secs(259_200)));
    assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
    assert!(parse_duration("1w").is_err() && parse_duration("").is_err() && parse_duration("m").is_err());
    assert_eq!(parse_size("2g"), Ok(2 << 30));
    assert_eq!(parse_size("512M"), Ok(512 << 20));
    assert_eq!(parse_size("1GiB"), Ok(1 << 30));
    assert_eq!(parse_size("100"), Ok(100));
    assert!(parse_size("2t").is_err() && parse_size("99999999999999999g").is_err());
}

#[test]
fn a_toml_file_fills_what_flags_and_environment_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, "max_workers = 9\nworker_memory = \"1g\"\nauto_review = true\ntrusted_users = [\"alice\", \"bob\"]\nbind = \"127.0.0.1:9999\"\n").unwrap();
    let args: Vec<std::ffi::OsString> =
        ["berth", "serve", "--bind=127.0.0.1:7777", &format!("--config={}", path.display())]
            .map(Into::into)
            .to_vec();
    let env = |name: &str| (name == "BERTH_WORKER_MEMORY").then(|| "3g".to_owned());
    let merged: Vec<String> = crate::config::with_config_file(args, env)
        .unwrap()
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
    assert!(merged.contains(&"--max-workers=9".to_owned()), "{merged:?}");
    assert!(merged.contains(&"--auto-review".to_owned()));
    assert!(merged.contains(&"--trusted-users=alice,bob".to_owned()));
    assert!(!merged.iter().any(|arg| arg.starts_with("--worker-memory")), "the environment wins: {merged:?}");
    assert!(!merged.contains(&"--bind=127.0.0.1:9999".to_owned()), "the flag wins: {merged:?}");

    std::fs::write(&path, "max_wokers = 9\n").unwrap();
    let args: Vec<std::ffi::OsString> =
        ["berth", "serve", &format!("--config={}", path.display())].map(Into::into).to_vec();
    let err = crate::config::with_config_file(args, |_| None).unwrap_err();
    assert_eq!(err.setting, "BERTH_CONFIG");
    assert!(err.to_string().contains("unknown setting \"max_wokers\""), "{err}");
    let args: Vec<std::ffi::OsString> = ["berth", "app-manifest"].map(Into::into).to_vec();
    assert_eq!(crate::config::with_config_file(args.clone(), |_| Some("/nonexistent".into())).unwrap(), args);
}

/// After `berth setup --state-dir X`, `berth logs`, `ps` and `cancel` find
/// the daemon's state, address and admin token through the same file.
#[test]
fn ps_logs_and_cancel_take_their_own_settings_from_the_daemons_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(
        &path,
        "github_app_id = 7
state_dir = \"/srv/berth\"
bind = \"127.0.0.1:9090\"
admin_token_file = \"/srv/berth/admin-token\"
engine = \"kubernetes\"
max_workers = 3
",
    )
    .unwrap();
    let merged = |command: &[&str], env: Option<(&str, &str)>| -> Vec<String> {
        let mut args = vec!["berth".to_owned()];
        args.extend(command.iter().map(|arg| (*arg).to_owned()));
        args.push(format!("--config={}", path.display()));
        let args = args.into_iter().map(Into::into).collect();
        let env = |name: &str| env.filter(|(wanted, _)| *wanted == name).map(|(_, value)| value.to_owned());
        crate::config::with_config_file(args, env)
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    };
    let logs = merged(&["logs", "task-1"], None);
    assert!(logs.contains(&"--state-dir=/srv/berth".to_owned()), "{logs:?}");
    assert!(logs.contains(&"--engine=kubernetes".to_owned()), "{logs:?}");
    assert!(
        !logs.iter().any(|arg| arg.starts_with("--github-app-id") || arg.starts_with("--bind")),
        "{logs:?}"
    );
    let cancel = merged(&["cancel", "task-1"], None);
    assert!(cancel.contains(&"--bind=127.0.0.1:9090".to_owned()), "{cancel:?}");
    assert!(cancel.contains(&"--admin-token-file=/srv/berth/admin-token".to_owned()), "{cancel:?}");
    let ps = merged(&["ps"], Some(("BERTH_STATE_DIR", "/elsewhere")));
    assert!(!ps.iter().any(|arg| arg.starts_with("--state-dir")), "the environment wins: {ps:?}");
    assert!(ps.contains(&"--engine=kubernetes".to_owned()), "{ps:?}");
    // A token given by the environment is not joined by the file's
    // `admin_token_file`: the two would be refused as set twice.
    let cancel = merged(&["cancel", "task-1"], Some(("BERTH_ADMIN_TOKEN", "a-long-enough-admin-token")));
    assert!(!cancel.iter().any(|arg| arg.starts_with("--admin-token-file")), "{cancel:?}");
    let serve = merged(&["serve", "--admin-token=a-long-enough-admin-token"], None);
    assert!(!serve.iter().any(|arg| arg.starts_with("--admin-token-file")), "{serve:?}");
    // Each merged line parses as that command.
    for line in [logs, cancel, ps] {
        crate::config::Cli::try_parse_from(&line).unwrap_or_else(|err| panic!("{line:?}: {err}"));
    }
    // A key the daemon does not know is still an error, and so is a file
    // that cannot be read.
    std::fs::write(&path, "state_dri = \"/srv\"\n").unwrap();
    let args = vec!["berth".into(), "ps".into(), format!("--config={}", path.display()).into()];
    let err = crate::config::with_config_file(args, |_| None).unwrap_err();
    assert!(err.to_string().contains("unknown setting \"state_dri\""), "{err}");
    let args: Vec<std::ffi::OsString> = ["berth", "ps"].map(Into::into).to_vec();
    let err = crate::config::with_config_file(args, |_| Some("/nonexistent".into())).unwrap_err();
    assert_eq!(err.setting, "BERTH_CONFIG");
}

#[test]
fn the_admin_token_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-token");
    std::fs::write(&file, "a-long-enough-admin-token\n").unwrap();
    let from_file = format!("--admin-token-file={}", file.display());
    let config = serve_args(&[&from_file]).validate().unwrap();
    assert_eq!(config.admin_token.unwrap().expose(), "a-long-enough-admin-token");

    let err = serve_args(&[&from_file, "--admin-token=another-long-admin-token"]).validate().unwrap_err();
    assert_eq!(err.setting, "BERTH_ADMIN_TOKEN", "{err}");
    std::fs::write(&file, "\n").unwrap();
    let err = serve_args(&[&from_file]).validate().unwrap_err();
    assert_eq!(err.setting, "BERTH_ADMIN_TOKEN_FILE", "{err}");
    std::fs::write(&file, "short").unwrap();
    let err = serve_args(&[&from_file]).validate().unwrap_err();
    assert_eq!(err.setting, "BERTH_ADMIN_TOKEN_FILE", "{err}");
}

/// A file of its own for one test (tests run in parallel).
fn file(name: &str, text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let shown = path.display().to_string();
    (dir, shown)
}

#[test]
fn the_agent_settings_and_secrets_files_are_read_and_kept_apart() {
    let (_env_dir, env_file) =
        file("agent.env", "# the model\nANTHROPIC_BASE_URL=http://model:8080\n\nMODEL=claude-x\r\nEMPTY=\n");
    let (_secret_dir, secrets_file) =
        file("agent.secrets", "ANTHROPIC_API_KEY=sk-ant-very-secret=with=equals\n");
    let config = serve_args(&[
        &format!("--worker-env-file={env_file}"),
        &format!("--worker-secrets-file={secrets_file}"),
    ])
    .validate()
    .unwrap();
    let agent = config.agent_env_files.load().unwrap();
    assert_eq!(
        agent.to_env(),
        [
            ("ANTHROPIC_BASE_URL", "http://model:8080"),
            ("MODEL", "claude-x"),
            ("EMPTY", ""),
            ("ANTHROPIC_API_KEY", "sk-ant-very-secret=with=equals"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
    );
    assert_eq!(agent.secret_names(), ["ANTHROPIC_API_KEY"]);
    assert!(!format!("{agent:?}").contains("very-secret"), "Debug shows names only");
    assert_eq!(agent.redact("key sk-ant-very-secret=with=equals!"), "key ***!");
}

#[test]
fn a_bad_agent_settings_line_is_named_by_file_and_line_never_by_value() {
    let cases: &[(&str, &str)] = &[
        ("A=hunter2-hunter2\nnot a pair\n", "line 2: not a NAME=VALUE line"),
        ("1BAD=hunter2-hunter2\n", "line 1: \"1BAD\" is not a variable name"),
        ("SPACE =hunter2-hunter2\n", "line 1: \"SPACE \" is not a variable name"),
        ("KEY=hunter2-hunter2\nKEY=hunter2-hunter2\n", "line 2: KEY is set twice"),
        ("# fine\nBERTH_TASK_ID=hunter2-hunter2\n", "line 2: BERTH_TASK_ID belongs to Berth"),
        ("GITHUB_TOKEN=hunter2-hunter2\n", "GITHUB_TOKEN belongs to Berth"),
        ("GH_TOKEN=hunter2-hunter2\n", "GH_TOKEN belongs to Berth"),
        ("GIT_ASKPASS=hunter2-hunter2\n", "GIT_ASKPASS belongs to Berth"),
        ("HOME=hunter2-hunter2\n", "HOME belongs to Berth"),
        ("PATH=hunter2-hunter2\n", "PATH belongs to Berth"),
    ];
    for (flag, setting) in [
        ("--worker-env-file", "BERTH_WORKER_ENV_FILE"),
        ("--worker-secrets-file", "BERTH_WORKER_SECRETS_FILE"),
    ] {
        for (text, expected) in cases {
            let (_dir, path) = file("bad.env", text);
            let err = serve_args(&[&format!("{flag}={path}")]).validate().unwrap_err();
            assert_eq!(err.setting, setting, "{text:?}");
            let line = err.to_string();
            assert!(line.contains(&path) && line.contains(expected), "{text:?} gave {line}");
            assert!(!line.contains("hunter2"), "the value leaked: {line}");
            assert!(!line.contains('\n'), "one line: {line}");
        }
    }
    // The same name in both files is a duplicate too.
    let (_a, env_file) = file("a.env", "KEY=plain-value\n");
    let (_b, secrets_file) = file("b.env", "KEY=hunter2-hunter2\n");
    let err = serve_args(&[
        &format!("--worker-env-file={env_file}"),
        &format!("--worker-secrets-file={secrets_file}"),
    ])
    .validate()
    .unwrap_err();
    assert_eq!(err.setting, "BERTH_WORKER_SECRETS_FILE");
    assert!(err.to_string().contains("KEY is set twice"), "{err}");
    // A secret too short to redact, and a file that is not there.
    let (_c, short) = file("short.env", "KEY=abc\n");
    let err = serve_args(&[&format!("--worker-secrets-file={short}")]).validate().unwrap_err();
    assert!(err.to_string().contains("too short to redact") && !err.to_string().contains("abc\""), "{err}");
    let err = serve_args(&["--worker-env-file=/no/such/file"]).validate().unwrap_err();
    assert_eq!(err.setting, "BERTH_WORKER_ENV_FILE");
    assert!(err.to_string().contains("cannot read /no/such/file"), "{err}");
}

#[test]
fn prompt_templates_are_checked_at_start() {
    let (_dir, good) =
        file("review.md", "Review {repo}#{number} for @{requester}; write {summary_file}. {{braces}}");
    let config = serve_args(&[&format!("--review-prompt-file={good}")]).validate().unwrap();
    assert_ne!(config.prompts.review, domain::prompt::Prompts::default().review);
    let (_dir, bad) = file("implement.md", "Implement {title} on {branch_name}");
    let err = serve_args(&[&format!("--implement-prompt-file={bad}")]).validate().unwrap_err();
    assert_eq!(err.setting, "BERTH_IMPLEMENT_PROMPT_FILE");
    assert!(err.to_string().contains("unknown placeholder {branch_name}"), "{err}");
    let err = serve_args(&["--review-prompt-file=/no/such/template"]).validate().unwrap_err();
    assert_eq!(err.setting, "BERTH_REVIEW_PROMPT_FILE");
}

#[test]
fn a_timeout_no_token_can_cover_is_refused() {
    assert!(serve_args(&["--task-timeout=50m"]).validate().is_ok());
    let err = serve_args(&["--task-timeout=51m"]).validate().unwrap_err();
    assert_eq!(err.setting, "BERTH_TASK_TIMEOUT");
    assert!(err.to_string().contains("expires one hour after it is made"), "{err}");
    assert_eq!(serve_args(&["--task-timeout=2h"]).validate().unwrap_err().setting, "BERTH_TASK_TIMEOUT");
}

#[test]
fn the_agent_files_and_prompt_templates_are_settable_in_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(
        &path,
        "worker_env_file = \"/etc/berth/agent.env\"\nworker_secrets_file = \"/etc/berth/agent.secrets\"\nreview_prompt_file = \"/etc/berth/review.md\"\nimplement_prompt_file = \"/etc/berth/implement.md\"\n",
    )
    .unwrap();
    let args: Vec<std::ffi::OsString> =
        ["berth", "serve", &format!("--config={}", path.display())].map(Into::into).to_vec();
    let merged: Vec<String> = crate::config::with_config_file(args, |_| None)
        .unwrap()
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
    for flag in [
        "--worker-env-file=/etc/berth/agent.env",
        "--worker-secrets-file=/etc/berth/agent.secrets",
        "--review-prompt-file=/etc/berth/review.md",
        "--implement-prompt-file=/etc/berth/implement.md",
    ] {
        assert!(merged.contains(&flag.to_owned()), "{flag} missing from {merged:?}");
    }
}

#[test]
fn the_engine_and_its_namespace_are_checked_and_named() {
    let docker = serve_args(&[]).validate().unwrap();
    assert_eq!(
        (docker.engine.kind, docker.engine.namespace.as_str()),
        (crate::engine::EngineKind::Docker, "berth")
    );
    let kube = serve_args(&["--engine=kubernetes", "--kube-namespace=berth-workers"]).validate().unwrap();
    assert_eq!(kube.engine.kind, crate::engine::EngineKind::Kubernetes);
    assert_eq!(kube.engine.namespace, "berth-workers");
    let err = serve_args(&["--engine=swarm"]).validate().unwrap_err();
    assert_eq!(err.setting, "BERTH_ENGINE");
    assert!(err.to_string().contains("docker or kubernetes"), "{err}");
    for namespace in ["", "Berth", "-berth", "berth_workers", &"n".repeat(64)] {
        let flag = format!("--kube-namespace={namespace}");
        let err = serve_args(&["--engine=kubernetes", &flag]).validate().unwrap_err();
        assert_eq!(err.setting, "BERTH_KUBE_NAMESPACE", "{namespace:?}");
    }
}
