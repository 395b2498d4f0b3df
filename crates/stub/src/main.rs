//! `berth-stub`: a stand-in for an agent CLI, and a probe that reports what a
//! container looks like from inside. Tests and `berth demo` put it in their
//! offline images; it is never part of a production deployment.
//!
//! Usage: `berth-stub <mode> [args]`, where mode is one of
//! `exit N`, `sleep SECS`, `ignore-term SECS`, `alloc MIB`, `probe`, `print TEXT...`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |index: usize| args.get(index).map(String::as_str).unwrap_or("");
    let number = |index: usize| arg(index).parse::<u64>().unwrap_or(0);
    match arg(0) {
        "exit" => ExitCode::from(u8::try_from(number(1)).unwrap_or(255)),
        "sleep" => {
            std::thread::sleep(Duration::from_secs(number(1)));
            ExitCode::SUCCESS
        }
        "ignore-term" => {
            ignore_sigterm();
            say("ignoring SIGTERM");
            std::thread::sleep(Duration::from_secs(number(1)));
            ExitCode::SUCCESS
        }
        "alloc" => {
            let mib = usize::try_from(number(1)).unwrap_or(usize::MAX);
            let mut blocks = Vec::new();
            for _ in 0..mib {
                // Touch every page so the memory is really charged.
                blocks.push(vec![1_u8; 1024 * 1024]);
            }
            say(&format!("allocated {} MiB", blocks.len()));
            ExitCode::SUCCESS
        }
        "probe" => {
            say(&probe());
            ExitCode::SUCCESS
        }
        "print" => {
            say(&args[1..].join(" "));
            ExitCode::SUCCESS
        }
        other => {
            let _ = writeln!(std::io::stderr(), "berth-stub: unknown mode {other:?}");
            ExitCode::from(64)
        }
    }
}

fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

#[expect(unsafe_code, reason = "setting a signal disposition needs libc; SIG_IGN installs no handler code")]
fn ignore_sigterm() {
    // SAFETY: SIG_IGN is a valid disposition and no Rust code runs as a handler.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
}

/// One line of `key=value` pairs describing the container from inside.
fn probe() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name).map(|rest| rest.trim_start_matches(':').trim().to_owned()))
            .unwrap_or_else(|| "?".to_owned())
    };
    let first_of = |paths: &[&str]| {
        paths
            .iter()
            .find_map(|path| std::fs::read_to_string(path).ok())
            .map(|value| value.trim().to_owned())
            .unwrap_or_else(|| "?".to_owned())
    };
    let uid = field("Uid").split_whitespace().nth(1).unwrap_or("?").to_owned();
    let gid = field("Gid").split_whitespace().nth(1).unwrap_or("?").to_owned();
    let pairs = [
        ("pid", std::process::id().to_string()),
        ("uid", uid),
        ("gid", gid),
        ("cap_eff", field("CapEff")),
        ("cap_prm", field("CapPrm")),
        ("cap_bnd", field("CapBnd")),
        ("no_new_privs", field("NoNewPrivs")),
        ("seccomp", field("Seccomp")),
        (
            "memory_limit",
            first_of(&["/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"]),
        ),
        (
            "memsw_limit",
            first_of(&["/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes", "/sys/fs/cgroup/memory.swap.max"]),
        ),
        ("pids_limit", first_of(&["/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max"])),
        ("cpu_quota", first_of(&["/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu.max"])),
        ("cpu_period", first_of(&["/sys/fs/cgroup/cpu/cpu.cfs_period_us"])),
        ("docker_sock", std::path::Path::new("/var/run/docker.sock").exists().to_string()),
        ("pid1", first_of(&["/proc/1/comm"])),
    ];
    pairs.iter().map(|(key, value)| format!("{key}={}", value.replace(' ', "_"))).collect::<Vec<_>>().join(" ")
}
