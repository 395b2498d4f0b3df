//! `berth demo`: the whole flow on this machine with nothing but Docker and
//! git: a worker image built offline from the binaries next to `berth`, a
//! sample repository served by `git daemon` on the Docker bridge, a local
//! fake GitHub, the real daemon on loopback with a generated secret and key,
//! one signed sample delivery, and the task's life printed to its end.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use dispatcher::DockerEngine;
use dispatcher::image::ImageContext;
use futures_util::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::{Cli, Command as CliCommand, DemoArgs};
use fake_github::FakeGitHub;

const REPO: &str = "demo/hello-berth";
const PULL: u64 = 1;
const IMAGE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=Berth Demo",
            "-c",
            "user.email=demo@berth.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .context("git is needed for the demo (install git)")?;
    if !output.status.success() {
        bail!("git {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The sample repository: `main` with a README, `feature` with a change to review.
fn sample_repository(root: &Path) -> anyhow::Result<(String, String)> {
    let bare = root.join("hello-berth.git");
    let work = root.join("work");
    std::fs::create_dir_all(&work)?;
    git(root, &["init", "--quiet", "--bare", &bare.to_string_lossy()])?;
    git(&work, &["init", "--quiet"])?;
    std::fs::write(work.join("README.md"), "# hello-berth\n\nA sample repository for `berth demo`.\n")?;
    git(&work, &["add", "."])?;
    git(&work, &["commit", "--quiet", "-m", "Initial commit"])?;
    let main_sha = git(&work, &["rev-parse", "HEAD"])?;
    git(&work, &["checkout", "--quiet", "-b", "feature"])?;
    std::fs::write(work.join("greet.sh"), "#!/bin/sh\necho \"hello, $1\"\n")?;
    git(&work, &["add", "."])?;
    git(&work, &["commit", "--quiet", "-m", "Add a greeting script"])?;
    let head_sha = git(&work, &["rev-parse", "HEAD"])?;
    git(&work, &["push", "--quiet", &bare.to_string_lossy(), "main", "feature"])?;
    Ok((main_sha, head_sha))
}

fn free_port(host: std::net::IpAddr) -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((host, 0))?.local_addr()?.port())
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buffer = vec![0_u8; bytes];
    let mut urandom = std::fs::File::open("/dev/urandom")?;
    std::io::Read::read_exact(&mut urandom, &mut buffer)?;
    Ok(hex::encode(buffer))
}

fn binaries_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the berth binary")?;
    let dir = exe.parent().context("the berth binary has no directory")?.to_owned();
    for name in ["berth-worker", "berth-stub"] {
        if !dir.join(name).is_file() {
            bail!(
                "{name} is missing next to {} (build everything with `cargo build --release --workspace`)",
                exe.display()
            );
        }
    }
    Ok(dir)
}

/// Runs the demo. Interrupted (Ctrl-C or SIGTERM), it stops what it
/// started and removes what it made before it exits, as at its end.
///
/// # Errors
/// When Docker, git or openssl are missing, any step fails, or it is interrupted.
pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let interrupted = CancellationToken::new();
    let signals = tokio::spawn(crate::cli::cancel_on_signal(interrupted.clone()));
    // Dropping the demo's future drops its guards: the git daemon is
    // stopped, the daemon told to stop, the directory removed.
    let result = tokio::select! {
        result = demo(args) => result,
        () = interrupted.cancelled() => Err(anyhow::anyhow!("interrupted; what the demo started is stopped")),
    };
    signals.abort();
    result
}

async fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    // Removed when the demo ends, however it ends.
    let temp_dir = TempDir(tempfile_dir()?);
    let temp = temp_dir.0.as_path();
    let state = args.state_dir.clone().unwrap_or_else(|| temp.to_owned());
    std::fs::create_dir_all(&state)?;

    say("berth demo: the whole flow on this machine, no GitHub account needed");
    let engine = DockerEngine::connect_local().await.context("the demo needs a running Docker Engine")?;
    let binaries = binaries_dir()?;

    say(&format!("[1/6] building the worker image {} offline (berth-worker, a stub agent, git)", args.image));
    let mut context = ImageContext::new();
    context
        .add_executable(&binaries.join("berth-worker"), "/usr/local/bin/berth-worker")?
        .add_executable(&binaries.join("berth-stub"), "/usr/local/bin/berth-stub")?
        .add_git()?
        .env("PATH", IMAGE_PATH)
        .entrypoint(&["/usr/local/bin/berth-worker"]);
    let mut steps = 0;
    engine
        .build_image(&args.image, context.to_tar()?, |line| {
            if line.starts_with("Step ") {
                steps += 1;
                say(&format!("      {line}"));
            }
        })
        .await?;

    say("[2/6] serving a sample repository with git daemon on the Docker bridge");
    let gateway = engine.network_gateway("bridge").await?;
    let repos = temp.join("repos");
    std::fs::create_dir_all(&repos)?;
    let (main_sha, head_sha) = sample_repository(&repos)?;
    let git_port = free_port(gateway)?;
    // Stopped when the demo ends, however it ends: it accepts pushes from
    // the bridge, so it must not outlive the demo.
    let _git_daemon = GitDaemon(
        git_daemon_command()
            .args(["--reuseaddr", "--export-all", "--enable=receive-pack"])
            .arg(format!("--base-path={}", repos.display()))
            .arg(format!("--listen={gateway}"))
            .arg(format!("--port={git_port}"))
            .arg(&repos)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Each connection is served by a child of its own: the group
            // is what is stopped.
            .process_group(0)
            .spawn()
            .context("cannot start git daemon")?,
    );
    let clone_url = format!("git://{gateway}:{git_port}/hello-berth.git");

    say("[3/6] starting a local fake GitHub and the daemon on loopback");
    let fake = FakeGitHub::start().await?;
    fake.set_pull(REPO, PULL, &head_sha, "feature", Some(REPO));
    fake.set_branch(REPO, "main", &main_sha);
    let key = state.join("demo-app-key.pem");
    let status = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048")
        .stderr(Stdio::null())
        .status()
        .context("the demo generates an App key with openssl (install openssl)")?;
    if !status.success() {
        bail!("openssl genrsa failed");
    }
    let secret = random_hex(16)?;
    let port = free_port(std::net::Ipv4Addr::LOCALHOST.into())?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let cli = Cli::try_parse_from([
        "berth".to_owned(),
        "serve".to_owned(),
        format!("--bind={addr}"),
        format!("--webhook-secret={secret}"),
        "--github-app-id=1".to_owned(),
        format!("--github-private-key-file={}", key.display()),
        format!("--github-api-url={}", fake.url()),
        format!("--worker-image={}", args.image),
        "--worker-memory=512m".to_owned(),
        "--task-timeout=5m".to_owned(),
        format!("--state-dir={}", state.join("state").display()),
        "--instance=demo".to_owned(),
        "--agent-command=/usr/local/bin/berth-stub prompt-steps {prompt_file} {summary_file}".to_owned(),
    ])?;
    let CliCommand::Serve(serve) = cli.command else { unreachable!("parsed a serve command") };
    let config = serve.validate()?;
    let shutdown = CancellationToken::new();
    // The daemon stops however the demo ends.
    let _stop_daemon = shutdown.clone().drop_guard();
    let daemon = tokio::spawn(crate::daemon::run(config, shutdown.clone()));
    let ready = Instant::now();
    loop {
        if let Ok((200, _)) = crate::cli::http_request(addr, "GET", "/readyz", None).await {
            break;
        }
        if ready.elapsed() > Duration::from_secs(30) {
            bail!("the daemon did not become ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say(&format!("      daemon ready at http://{addr} (journal in {})", state.join("state").display()));

    say("[4/6] sending a signed sample delivery: `/berth review` on pull request #1");
    let payload = json!({
        "action": "created",
        "issue": {"number": PULL, "title": "Add a greeting script", "pull_request": {"url": format!("https://api.github.invalid/repos/{REPO}/pulls/{PULL}")}},
        "comment": {"id": 9001, "body": "/berth review", "user": {"login": "octocat", "type": "User"}, "author_association": "OWNER"},
        "repository": {"full_name": REPO, "clone_url": clone_url, "default_branch": "main"},
        "sender": {"login": "octocat", "type": "User"},
        "installation": {"id": 1}
    });
    let body = serde_json::to_vec(&payload)?;
    let answer = post_delivery(addr, &secret, &body).await?;
    say(&format!("      202 Accepted: {answer}"));
    let answer: serde_json::Value = serde_json::from_str(&answer)?;
    let task = answer["task"].as_str().context("the delivery was not queued")?.to_owned();

    say(&format!("[5/6] following task {task}"));
    let outcome = follow(&engine, &fake, &task).await;
    say("[6/6] cleaning up (the worker container is already removed; the image stays for next time)");
    shutdown.cancel();
    let _ = daemon.await;
    fake.stop();
    let outcome = outcome?;
    say(&format!("done in {:.1} s: {outcome}", started.elapsed().as_secs_f64()));
    Ok(())
}

/// `git-daemon` itself, so that the child the demo waits for is the
/// server. `git daemon` would put a `git` in between that can die of the
/// signal before the server does, leaving it running.
fn git_daemon_command() -> Command {
    let exec_path = Command::new("git")
        .arg("--exec-path")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    match exec_path.map(|dir| dir.join("git-daemon")).filter(|path| path.is_file()) {
        Some(server) => Command::new(server),
        None => {
            let mut command = Command::new("git");
            command.arg("daemon");
            command
        }
    }
}

/// The git daemon and the children serving its connections, stopped when
/// dropped: SIGTERM to the group, SIGKILL if the server has not gone
/// within two seconds, and the server reaped before the drop returns.
struct GitDaemon(std::process::Child);

impl Drop for GitDaemon {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, killpg};
        // The child leads its own process group (`process_group(0)`).
        let Ok(group) = i32::try_from(self.0.id()) else { return };
        let group = nix::unistd::Pid::from_raw(group);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Still running, so the group's id is still the server's.
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// The demo's directory under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("berth-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn post_delivery(addr: SocketAddr, secret: &str, body: &[u8]) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let signature = domain::signature::sign(secret, body);
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST /webhook HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nX-GitHub-Event: issue_comment\r\nX-GitHub-Delivery: demo-{}\r\nX-Hub-Signature-256: {signature}\r\nContent-Length: {}\r\n\r\n",
        random_hex(8)?,
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response).into_owned();
    if !text.starts_with("HTTP/1.1 202") {
        bail!("the daemon refused the sample delivery: {text}");
    }
    Ok(text.split_once("\r\n\r\n").map(|(_, body)| body.trim().to_owned()).unwrap_or_default())
}

/// Prints the task's life as the fake GitHub and Docker see it, until its check run completes.
async fn follow(engine: &DockerEngine, fake: &FakeGitHub, task: &str) -> anyhow::Result<String> {
    let started = Instant::now();
    let (mut saw_run, mut saw_reaction, mut saw_worker) = (false, false, false);
    let task_id = core_types::TaskId::new(task.to_owned())?;
    let dispatcher = dispatcher::Dispatcher::new(
        engine.clone(),
        dispatcher::DispatcherConfig {
            image: String::new(),
            network: String::new(),
            profile: dispatcher::HardenedProfile::strict(),
            entrypoint: None,
            instance: "demo".to_owned(),
        },
    );
    let mut logs: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let elapsed = started.elapsed().as_secs_f64();
        let run =
            fake.with(|state| state.check_runs.values().find(|run| run["external_id"] == task).cloned());
        if let Some(run) = &run
            && !saw_run
        {
            saw_run = true;
            let sha = run["head_sha"].as_str().unwrap_or("");
            say(&format!(
                "      {elapsed:5.1}s check run {} in progress on {}",
                run["name"],
                sha.get(..7).unwrap_or(sha)
            ));
        }
        if !saw_reaction && fake.with(|state| !state.reactions.is_empty()) {
            saw_reaction = true;
            say(&format!("      {elapsed:5.1}s reacted 👀 to the triggering comment"));
        }
        if !saw_worker {
            let found = dispatcher.find(&task_id).await?;
            // Following the logs of a container that has not started yet ends at once.
            if let Some(container) =
                found.filter(|container| container.status != dispatcher::ContainerStatus::Created)
            {
                saw_worker = true;
                say(&format!(
                    "      {elapsed:5.1}s hardened worker container {} started; its output:",
                    container.name
                ));
                let mut stream = dispatcher.logs(&container.id, true);
                logs = Some(tokio::spawn(async move {
                    while let Some(Ok(chunk)) = stream.next().await {
                        for line in String::from_utf8_lossy(chunk.bytes()).lines() {
                            say(&format!("        | {line}"));
                        }
                    }
                }));
            }
        }
        if let Some(run) = run.filter(|run| run["status"] == "completed") {
            if let Some(logs) = logs.take() {
                let _ = tokio::time::timeout(Duration::from_secs(2), logs).await;
            }
            // The comment comes with the report.
            let comment_deadline = Instant::now() + Duration::from_secs(10);
            let comment = loop {
                let comment = fake.with(|state| state.comments.values().next().cloned());
                if comment.is_some() || Instant::now() > comment_deadline {
                    break comment;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let elapsed = started.elapsed().as_secs_f64();
            say(&format!(
                "      {elapsed:5.1}s check run completed: {} — {}",
                run["conclusion"], run["output"]["title"]
            ));
            if let Some(comment) = comment {
                say(&format!("      {elapsed:5.1}s result comment posted on {REPO}#{PULL}:"));
                for line in
                    comment["body"].as_str().unwrap_or("").lines().filter(|line| !line.starts_with("<!--"))
                {
                    say(&format!("        > {line}"));
                }
            }
            return Ok(format!("conclusion {}", run["conclusion"]));
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("the task did not finish within 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
