//! A local git server for the worker's tests and benchmark: `git daemon` on
//! the Docker bridge's gateway address, so worker containers on the default
//! `bridge` network clone from and push to it over `git://`, and nothing
//! leaves this machine.
//!
//! Each [`GitServer`] serves its own temporary directory on its own port and
//! is killed (with every connection it forked) when dropped.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The author of the commits tests make on the server side.
const SEED_AUTHOR: (&str, &str) = ("Berth E2E", "e2e@berth.invalid");

/// The address of the default `bridge` network's gateway: this host, as
/// containers on that network reach it. The engine here reports only the
/// subnet, in which case the gateway is its first address (Docker's rule).
pub async fn bridge_gateway() -> IpAddr {
    // Fails with one clear line when no engine answers.
    crate::engine().await;
    let docker = bollard::Docker::connect_with_unix_defaults().expect("the engine answered a moment ago");
    let network = docker
        .inspect_network("bridge", None::<bollard::query_parameters::InspectNetworkOptions>)
        .await
        .expect("the default bridge network exists");
    let configs = network.ipam.and_then(|ipam| ipam.config).unwrap_or_default();
    if let Some(gateway) = configs.iter().find_map(|config| config.gateway.as_deref()?.parse().ok()) {
        return gateway;
    }
    let subnet = configs
        .iter()
        .find_map(|config| {
            let (address, _) = config.subnet.as_deref()?.split_once('/')?;
            address.parse::<Ipv4Addr>().ok()
        })
        .expect("the bridge network has an IPv4 subnet");
    IpAddr::V4(Ipv4Addr::from(u32::from(subnet) + 1))
}

/// A running `git daemon` serving a temporary directory.
pub struct GitServer {
    daemon: Child,
    root: tempfile::TempDir,
    host: IpAddr,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl GitServer {
    /// Starts `git daemon` (fetch and push enabled) on the bridge gateway and
    /// waits for its "Ready to rumble" line.
    pub async fn start() -> GitServer {
        GitServer::start_on(bridge_gateway().await).await
    }

    /// Starts `git daemon` on `host`: the gateway of another engine's bridge.
    pub async fn start_on(host: IpAddr) -> GitServer {
        let root = tempfile::tempdir().expect("temporary directory");
        // Ask the kernel for a free port on that address; git daemon reuses it at once.
        let port = TcpListener::bind((host, 0))
            .and_then(|listener| listener.local_addr())
            .unwrap_or_else(|err| panic!("cannot listen on the bridge gateway {host}: {err}"))
            .port();
        let mut daemon = Command::new("git")
            .args([
                "daemon",
                "--verbose",
                "--reuseaddr",
                "--export-all",
                "--enable=receive-pack",
                "--informative-errors",
            ])
            .arg(format!("--base-path={}", root.path().display()))
            .arg(format!("--listen={host}"))
            .arg(format!("--port={port}"))
            .arg(root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own group, so dropping the server kills every connection it forked.
            .process_group(0)
            .spawn()
            .expect("git daemon starts (is git installed?)");
        let stderr = daemon.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Ready to rumble")
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(());
                }
                if let Ok(mut log) = sink.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let ready = tokio::time::timeout(Duration::from_secs(30), ready_rx).await;
        assert!(
            matches!(ready, Ok(Ok(()))),
            "git daemon did not get ready on {host}:{port}; its log:\n{}",
            log.lock().map(|log| log.clone()).unwrap_or_default()
        );
        GitServer { daemon, root, host, port, log }
    }

    /// The `git://` URL of a repository on this server.
    pub fn url(&self, repo: &str) -> String {
        format!("git://{}:{}/{repo}", self.host, self.port)
    }

    /// The address the server listens on.
    pub fn host(&self) -> IpAddr {
        self.host
    }

    /// Where the server's repositories live on this host.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }

    /// Creates the bare repository `name` (default branch `main`) and a
    /// working copy to fill it from.
    pub fn repo(&self, name: &str) -> SeedRepo {
        let bare = self.root.path().join(name);
        git(
            self.root.path(),
            &["init", "--quiet", "--bare", "--initial-branch=main", &bare.to_string_lossy()],
        );
        let work = self.root.path().join(format!("{name}.work"));
        git(self.root.path(), &["init", "--quiet", "--initial-branch=main", &work.to_string_lossy()]);
        SeedRepo { bare, work }
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.daemon.id()) {
            let _ =
                nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.daemon.wait();
    }
}

/// A bare repository on the server and the working copy that fills it.
pub struct SeedRepo {
    bare: PathBuf,
    work: PathBuf,
}

impl SeedRepo {
    /// Commits `content` to `file` on `branch` (created from the current
    /// branch when new), pushes the branch, and returns the commit id.
    pub fn commit(&self, branch: &str, file: &str, content: &str) -> String {
        let exists = Command::new("git")
            .current_dir(&self.work)
            .args(["rev-parse", "--verify", "--quiet", &format!("refs/heads/{branch}")])
            .stdout(Stdio::null())
            .status()
            .expect("git runs")
            .success();
        let has_commits = Command::new("git")
            .current_dir(&self.work)
            .args(["rev-parse", "--verify", "--quiet", "HEAD"])
            .stdout(Stdio::null())
            .status()
            .expect("git runs")
            .success();
        if exists {
            git(&self.work, &["checkout", "--quiet", branch]);
        } else if has_commits {
            git(&self.work, &["checkout", "--quiet", "-b", branch]);
        } else {
            git(&self.work, &["checkout", "--quiet", "--orphan", branch]);
        }
        let path = self.work.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create directories");
        }
        std::fs::write(&path, content).expect("write the file");
        git(&self.work, &["add", "--all"]);
        git(&self.work, &["commit", "--quiet", "-m", &format!("{file} on {branch}")]);
        git(&self.work, &["push", "--quiet", &self.bare.to_string_lossy(), branch]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// The commit a branch of the bare repository points to, if it exists.
    pub fn head_of(&self, branch: &str) -> Option<String> {
        let output = Command::new("git")
            .arg("--git-dir")
            .arg(&self.bare)
            .args(["rev-parse", "--verify", "--quiet", &format!("refs/heads/{branch}")])
            .output()
            .expect("git runs");
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// `git <args>` in the bare repository; its stdout, trimmed.
    pub fn git(&self, args: &[&str]) -> String {
        let mut all = vec!["--git-dir", self.bare.to_str().expect("temporary paths are UTF-8")];
        all.extend_from_slice(args);
        git(&self.work, &all)
    }
}

/// Runs git with a fixed identity and panics with its output when it fails.
fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", SEED_AUTHOR.0)
        .env("GIT_AUTHOR_EMAIL", SEED_AUTHOR.1)
        .env("GIT_COMMITTER_NAME", SEED_AUTHOR.0)
        .env("GIT_COMMITTER_EMAIL", SEED_AUTHOR.1)
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}
