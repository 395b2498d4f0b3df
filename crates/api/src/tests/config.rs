use std::time::Duration;

use clap::Parser;

use crate::config::{Cli, Command, ServeArgs, parse_duration, parse_size};

fn serve_args(extra: &[&str]) -> ServeArgs {
    // Written once per test process and never rewritten: tests run in
    // parallel, and a file rewritten by one is read empty by another.
    static KEY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let key = std::env::temp_dir().join(format!("berth-config-test-{}.pem", std::process::id()));
        std::fs::write(&key, "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")
            .unwrap();
        key
    });
    let mut args = vec![
        "berth".to_owned(),
        "serve".to_owned(),
        "--webhook-secret=s3cret-value".to_owned(),
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
    assert!(!format!("{config:?}").contains("s3cret-value"), "secrets are redacted in Debug");
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
        (&["--github-app-id=abc"], "BERTH_GITHUB_APP_ID"),
        (&["--github-api-url=ftp://x"], "BERTH_GITHUB_API_URL"),
        (&["--admin-token=short"], "BERTH_ADMIN_TOKEN"),
        (&["--allowed-repos=octo/repo,bad repo"], "BERTH_ALLOWED_REPOS"),
        (&["--log-format=xml"], "BERTH_LOG_FORMAT"),
        (&["--delivery-retention=1h"], "BERTH_DELIVERY_RETENTION"),
        (&["--worker-network=host"], "BERTH_WORKER_NETWORK"),
        (&["--github-private-key-file=/nonexistent/key.pem"], "BERTH_GITHUB_PRIVATE_KEY_FILE"),
    ];
    for (extra, setting) in cases {
        let err = serve_args(extra).validate().unwrap_err();
        assert_eq!(err.setting, *setting, "{extra:?}: {err}");
        let line = err.to_string();
        assert!(!line.contains('\n') && line.contains(setting), "{line}");
    }
    assert!(serve_args(&["--bind=0.0.0.0:8080", "--allow-public-bind"]).validate().is_ok());
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
    let args: Vec<std::ffi::OsString> = ["berth", "ps"].map(Into::into).to_vec();
    assert_eq!(crate::config::with_config_file(args.clone(), |_| Some("/nonexistent".into())).unwrap(), args);
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
