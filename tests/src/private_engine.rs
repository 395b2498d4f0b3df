//! A Docker Engine of the test's own: `dockerd` with its own socket, data and
//! exec roots, containerd and bridge, so a test can stop and restart the
//! engine under a running Berth without touching the machine's engine that
//! every other test shares.
//!
//! It runs with live-restore off (dockerd's default) unless told otherwise:
//! stopping it stops every container it runs, as a restart of a production
//! engine does. Storage is
//! `vfs` (works on any file system, no kernel module); the bridge is a Linux
//! bridge this module creates with its own /24, with no iptables rules, so
//! containers reach this host on the bridge's address and nothing else; its
//! containerd namespace is its own, also where dockerd finds a system
//! containerd to share.
//! Needs root, as any dockerd does.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `dockerd` of this test's, removed with all it made when dropped.
pub struct PrivateEngine {
    dir: tempfile::TempDir,
    bridge: String,
    gateway: Ipv4Addr,
    daemon: Option<Child>,
}

impl PrivateEngine {
    /// Creates the bridge and starts `dockerd`; returns once it answers.
    pub async fn start() -> PrivateEngine {
        PrivateEngine::start_with_config("{}").await
    }

    /// As [`PrivateEngine::start`], with `config` as dockerd's `daemon.json`
    /// (for example `{"live-restore": true}`).
    pub async fn start_with_config(config: &str) -> PrivateEngine {
        let dir = tempfile::Builder::new().prefix("berth-dockerd-").tempdir().expect("a temp dir");
        let (bridge, gateway) = create_bridge();
        std::fs::write(dir.path().join("daemon.json"), config).expect("the config is written");
        let mut engine = PrivateEngine { dir, bridge, gateway, daemon: None };
        engine.run().await;
        engine
    }

    /// `DOCKER_HOST` for this engine.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// This host's address on the engine's bridge, which its containers reach.
    pub fn gateway(&self) -> IpAddr {
        IpAddr::V4(self.gateway)
    }

    /// A client of this engine.
    pub fn docker(&self) -> bollard::Docker {
        bollard::Docker::connect_with_unix(
            &self.socket().to_string_lossy(),
            120,
            bollard::API_DEFAULT_VERSION,
        )
        .expect("the socket path is valid")
    }

    /// Copies `image` from the machine's engine into this one (the engine
    /// here has no registry to pull from).
    pub async fn load_image(&self, image: &str) {
        let script = format!("docker save {image} | docker -H {} load", self.host());
        let output =
            tokio::process::Command::new("sh").args(["-c", &script]).output().await.expect("sh runs");
        assert!(
            output.status.success(),
            "cannot copy {image} into the private engine: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Stops `dockerd` as an operator or a package upgrade does (SIGTERM,
    /// which stops its containers), and waits until it has exited.
    pub async fn stop(&mut self) {
        let Some(mut daemon) = self.daemon.take() else { return };
        tokio::task::spawn_blocking(move || terminate(&mut daemon, Duration::from_secs(60)))
            .await
            .expect("the stop task runs");
    }

    /// Starts `dockerd` again on the same state.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.run().await;
    }

    /// What dockerd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("dockerd.log")
    }

    async fn run(&mut self) {
        let root = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("the log file opens");
        let daemon = Command::new("dockerd")
            .arg(format!("--host=unix://{}", self.socket().display()))
            .arg(format!("--data-root={}", root.join("data").display()))
            .arg(format!("--exec-root={}", root.join("exec").display()))
            .arg(format!("--pidfile={}", root.join("dockerd.pid").display()))
            .arg(format!("--config-file={}", root.join("daemon.json").display()))
            .arg(format!("--bridge={}", self.bridge))
            .args(["--iptables=false", "--ip-masq=false", "--storage-driver=vfs"])
            // Where a system containerd answers on its default socket, dockerd
            // uses it; a namespace of our own keeps the machine engine's
            // containers (namespace `moby`) out of this engine's sight.
            .arg(format!("--containerd-namespace={}", self.bridge))
            .arg(format!("--containerd-plugins-namespace={}-plugins", self.bridge))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file handle clones"))
            .stderr(log)
            .spawn()
            .expect("dockerd starts (is docker.io installed, and are we root?)");
        self.daemon = Some(daemon);
        let socket = self.socket().to_string_lossy().into_owned();
        let started = Instant::now();
        loop {
            // The client refuses a socket file that does not exist yet.
            if let Ok(docker) = bollard::Docker::connect_with_unix(&socket, 5, bollard::API_DEFAULT_VERSION)
                && docker.ping().await.is_ok()
            {
                break;
            }
            if let Some(daemon) = self.daemon.as_mut()
                && let Ok(Some(status)) = daemon.try_wait()
            {
                panic!("dockerd exited with {status}; its log:\n{}", self.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "dockerd did not answer within 60 s; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            // Containers first, so the engine has nothing to wait for.
            let socket = self.socket();
            let _ = Command::new("sh")
                .args(["-c", "ids=$(docker -H \"unix://$0\" ps -aq) && [ -n \"$ids\" ] && docker -H \"unix://$0\" rm -f $ids"])
                .arg(&socket)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            terminate(&mut daemon, Duration::from_secs(30));
        }
        let _ = Command::new("ip").args(["link", "delete", &self.bridge]).status();
        // dockerd may leave mounts under its roots (with live-restore it keeps
        // them for the next start); unmount them, deepest first, before removing.
        let root = self.dir.path().to_string_lossy().into_owned();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1))
            .filter(|target| target.starts_with(&root))
            .map(str::to_owned)
            .collect();
        mounts.sort_by_key(|target| std::cmp::Reverse(target.len()));
        for target in mounts {
            let _ = Command::new("umount").args(["-l", &target]).status();
        }
        // The data root holds read-only layer files; remove what can be removed.
        let _ = Command::new("rm").arg("-rf").arg(self.dir.path()).status();
    }
}

/// SIGTERM, then SIGKILL if it has not exited within `grace`.
fn terminate(daemon: &mut Child, grace: Duration) {
    let _ = Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status();
    let started = Instant::now();
    while started.elapsed() < grace {
        if let Ok(Some(_)) = daemon.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// A new Linux bridge with a free 10.213.x.0/24 on it; its name and this host's address.
fn create_bridge() -> (String, Ipv4Addr) {
    let taken = Command::new("ip").args(["-4", "-o", "addr"]).output().expect("ip runs");
    let taken = String::from_utf8_lossy(&taken.stdout).into_owned();
    // Several engines in one test process each need their own bridge and subnet.
    static ENGINES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let engine = ENGINES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = std::process::id().wrapping_add(engine.wrapping_mul(97))
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
    let third = (1..=254_u32)
        .map(|offset| seed.wrapping_add(offset) % 254 + 1)
        .find(|third| !taken.contains(&format!("10.213.{third}.")))
        .expect("a free 10.213.x.0/24");
    let gateway = Ipv4Addr::new(10, 213, u8::try_from(third).expect("below 255"), 1);
    let bridge = format!("berth{}-{engine}", std::process::id() % 1_000_000);
    for args in [
        vec!["link", "add", &bridge, "type", "bridge"],
        vec!["addr", "add", &format!("{gateway}/24"), "dev", &bridge],
        vec!["link", "set", &bridge, "up"],
    ] {
        let output = Command::new("ip").args(&args).output().expect("ip runs");
        if !output.status.success() {
            let _ = Command::new("ip").args(["link", "delete", &bridge]).output();
            panic!(
                "`ip {}` failed (this test needs root): {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
    }
    (bridge, gateway)
}
