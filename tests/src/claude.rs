//! The real Claude Code CLI as the agent: where the tests find the binary
//! and the offline image that carries it.
//!
//! The CLI is not part of the clone (it is about 400 MB). The tests take it
//! from `BERTH_CLAUDE_BIN`, else from
//! `${BERTH_AGENT_CACHE:-$HOME/.cache/berth}/claude-code/claude`, where
//! `tests/agents/fetch-claude-code.sh` puts it. When it is missing, they fail
//! with one line saying to run that script; they never skip.

use std::path::PathBuf;

use core_types::env_names::{BERTH_AGENT_CACHE, BERTH_CLAUDE_BIN};
use tokio::sync::OnceCell;

/// Tag of the offline image with the Claude Code CLI.
pub const CLAUDE_IMAGE: &str = "berth-test-claude:e2e";

/// Where the CLI lives in that image (on its `PATH`).
pub const CLAUDE: &str = "/usr/local/bin/claude";

/// The agent command the README gives for Claude Code.
pub const CLAUDE_COMMAND: &str =
    "claude -p --permission-mode acceptEdits --add-dir {work_dir} --output-format text";

/// The settings of a daemon whose workers run Claude Code (the README's
/// "Running a real agent") against the model at `model_url`: the agent
/// command, 1 GiB workers, and the env and secrets files, written into `dir`
/// (the key only in the secrets file).
pub fn claude_settings(dir: &std::path::Path, model_url: &str, api_key: &str) -> Vec<(&'static str, String)> {
    let env_file = dir.join("agent.env");
    let secrets_file = dir.join("agent.secrets");
    std::fs::write(
        &env_file,
        format!("ANTHROPIC_BASE_URL={model_url}\nCLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1\n"),
    )
    .expect("the agent's env file is written");
    std::fs::write(&secrets_file, format!("ANTHROPIC_API_KEY={api_key}\n"))
        .expect("the secrets file is written");
    vec![
        ("BERTH_AGENT_COMMAND", CLAUDE_COMMAND.to_owned()),
        ("BERTH_WORKER_ENV_FILE", env_file.display().to_string()),
        ("BERTH_WORKER_SECRETS_FILE", secrets_file.display().to_string()),
        ("BERTH_WORKER_MEMORY", "1g".to_owned()),
    ]
}

/// The script that fetches the CLI into the cache, relative to the clone.
pub const FETCH_SCRIPT: &str = "tests/agents/fetch-claude-code.sh";

/// The Claude Code CLI on this host: `BERTH_CLAUDE_BIN`, else the cache
/// the fetch script fills. Panics with one line when it is not there.
pub fn claude_binary() -> PathBuf {
    let path = match std::env::var_os(BERTH_CLAUDE_BIN).filter(|path| !path.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => {
            let cache = std::env::var_os(BERTH_AGENT_CACHE).filter(|path| !path.is_empty()).map_or_else(
                || {
                    let home = std::env::var_os("HOME").expect("HOME is set");
                    PathBuf::from(home).join(".cache/berth")
                },
                PathBuf::from,
            );
            cache.join("claude-code/claude")
        }
    };
    assert!(
        path.is_file(),
        "the Claude Code CLI is not at {}: run {FETCH_SCRIPT} (or set {BERTH_CLAUDE_BIN})",
        path.display()
    );
    path
}

static IMAGE: OnceCell<String> = OnceCell::const_new();

/// The test image (berth-worker as entrypoint, berth-stub, git) plus the
/// Claude Code CLI at [`CLAUDE`], built once per test run.
///
/// The CLI needs nothing else of a `FROM scratch` image: glibc (what `ldd`
/// lists), a writable `HOME` (`/home/berth`; it writes `~/.claude.json`
/// and `~/.claude/`) and `/tmp`. No shell, no certificates for plain HTTP.
pub async fn claude_image() -> &'static str {
    IMAGE
        .get_or_init(|| async {
            let claude = claude_binary();
            crate::build_test_image(CLAUDE_IMAGE, move |context| {
                context
                    .add_executable(&claude, CLAUDE)
                    .expect("the Claude Code CLI and its libraries are readable");
            })
            .await
        })
        .await
}
