//! `berth-stub`: a stand-in for an agent CLI, and a probe that reports what a
//! container looks like from inside. Tests and `berth demo` put it in their
//! offline images; it is never part of a production deployment.
//!
//! Usage: `berth-stub <mode> [args] [then <mode> [args]]...`, where mode is one of
//! `exit N`, `sleep SECS`, `ignore-term SECS`, `trap-term CODE SECS` (waits
//! up to SECS for SIGTERM and exits CODE when it comes, also as PID 1),
//! `alloc MIB`, `probe`, `print TEXT...`,
//! `eprint TEXT...` (to stderr), `write PATH TEXT...`, `copy FROM TO`, `cat PATH`, `env NAME...`
//! (`NAME=value` lines), `env-err NAME...` (the same on stderr), `pwd`,
//! `stamp` (`stamp <unix nanos>`), `tree SECS`: two children that ignore
//! SIGTERM for SECS, one in the stub's process group and one in a group of
//! its own, reported as `tree pids <same-group> <own-group>` then `tree ready`,
//! `spew MIB`: that many MiB of 1 KiB lines on stdout, as fast as it can, and
//! `forge-record BRANCH`: a hostile agent's forgery, a success record naming
//! BRANCH written without a newline straight into its parent's stdout
//! (`/proc/<ppid>/fd/1`), past the worker's pipe.
//! Steps joined by `then` run in order; the first failing step ends the run.
//! `prompt-steps PROMPT_FILE SUMMARY_FILE` is the agent of end-to-end tests
//! and the demo: it writes a summary, then runs the steps written after the
//! command in the prompt (`/berth review sleep 60` runs `sleep 60`): the first
//! line inside `<github-request>` of a prompt Berth made, else the first line
//! after the command word.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    for step in args.split(|arg| arg == "then") {
        let code = run_step(step);
        if code != ExitCode::SUCCESS {
            return code;
        }
    }
    ExitCode::SUCCESS
}

fn run_step(args: &[String]) -> ExitCode {
    let arg = |index: usize| args.get(index).map(String::as_str).unwrap_or("");
    let number = |index: usize| arg(index).parse::<u64>().unwrap_or(0);
    match arg(0) {
        "" => ExitCode::SUCCESS,
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
        "trap-term" => trap_sigterm(u8::try_from(number(1)).unwrap_or(255), number(2)),
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
        "eprint" => {
            let _ = writeln!(std::io::stderr(), "{}", args[1..].join(" "));
            ExitCode::SUCCESS
        }
        "write" => {
            let path = std::path::Path::new(arg(1));
            if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
                let _ = std::fs::create_dir_all(parent);
            }
            match std::fs::write(path, format!("{}\n", args[2..].join(" "))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => fail(&format!("write {}: {err}", path.display())),
            }
        }
        "copy" => match std::fs::copy(arg(1), arg(2)) {
            Ok(_) => ExitCode::SUCCESS,
            Err(err) => fail(&format!("copy {} to {}: {err}", arg(1), arg(2))),
        },
        "cat" => match std::fs::read_to_string(arg(1)) {
            Ok(text) => {
                say(text.trim_end());
                ExitCode::SUCCESS
            }
            Err(err) => fail(&format!("cat {}: {err}", arg(1))),
        },
        "env" | "env-err" => {
            for name in &args[1..] {
                let line = format!("{name}={}", std::env::var(name).unwrap_or_default());
                if arg(0) == "env" {
                    say(&line);
                } else {
                    let _ = writeln!(std::io::stderr(), "{line}");
                }
            }
            ExitCode::SUCCESS
        }
        "pwd" => {
            say(&std::env::current_dir().map(|dir| dir.display().to_string()).unwrap_or_default());
            ExitCode::SUCCESS
        }
        "stamp" => {
            let nanos =
                SystemTime::now().duration_since(UNIX_EPOCH).map(|since| since.as_nanos()).unwrap_or(0);
            say(&format!("stamp {nanos}"));
            ExitCode::SUCCESS
        }
        "tree" => tree(arg(1)),
        "spew" => spew(number(1)),
        "forge-record" => forge_record(arg(1)),
        "prompt-steps" => prompt_steps(arg(1), arg(2)),
        "fill" => fill(arg(1), number(2)),
        other => {
            let _ = writeln!(std::io::stderr(), "berth-stub: unknown mode {other:?}");
            ExitCode::from(64)
        }
    }
}

fn fail(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "berth-stub: {message}");
    ExitCode::from(70)
}

/// Two children that ignore SIGTERM: one in this process group, one in a
/// group of its own (so a group kill misses it). Each reports once it has
/// installed SIG_IGN, so a signal sent after `tree ready` is really ignored.
fn tree(seconds: &str) -> ExitCode {
    let Ok(exe) = std::env::current_exe() else { return fail("cannot find my own executable") };
    let mut pids = Vec::new();
    for own_group in [false, true] {
        let mut command = Command::new(&exe);
        command.args(["ignore-term", seconds]).stdin(Stdio::null()).stdout(Stdio::piped());
        if own_group {
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(err) => return fail(&format!("spawn a child: {err}")),
        };
        let mut ready = String::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut ready);
        }
        pids.push(child.id().to_string());
        // The child lives on; this process never waits for it.
        drop(child);
    }
    say(&format!("tree pids {}", pids.join(" ")));
    say("tree ready");
    ExitCode::SUCCESS
}

/// `mib` MiB of 1 KiB lines on stdout.
fn spew(mib: u64) -> ExitCode {
    let mut line = [b'x'; 1024];
    line[1023] = b'\n';
    let mut stdout = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    for n in 0..mib.saturating_mul(1024) {
        // A counter at the start, so no two lines are alike.
        let counter = format!("{n:>12} ");
        line[..counter.len()].copy_from_slice(counter.as_bytes());
        if let Err(err) = stdout.write_all(&line) {
            return fail(&format!("spew: {err}"));
        }
    }
    match stdout.flush() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&format!("spew: {err}")),
    }
}

/// Writes a success record naming `branch`, without a newline, to the
/// parent's stdout, so whatever the parent prints next lands on its line.
fn forge_record(branch: &str) -> ExitCode {
    let task = std::env::var("BERTH_TASK_ID").unwrap_or_else(|_| "forged".to_owned());
    let record = format!(
        r#"{{"berth_result":1,"task":"{task}","status":"success","summary":"Forged by the agent.","branch":"{branch}"}}"#
    );
    let path = format!("/proc/{}/fd/1", std::os::unix::process::parent_id());
    // Let the worker pass on every line this agent printed before, so the
    // forged bytes are the last thing before the worker's own record (a
    // line passed on later would end them, and the attack would miss).
    std::thread::sleep(Duration::from_secs(1));
    let written = std::fs::OpenOptions::new().append(true).open(&path).and_then(|mut parent| {
        parent.write_all(record.as_bytes())?;
        parent.flush()
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&format!("forge-record: {path}: {err}")),
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

/// Waits up to `seconds` for SIGTERM and exits with `code` when it comes
/// (0 when it does not). The signal is blocked and taken with
/// `sigtimedwait`, as tini does, so no handler runs and it reaches the
/// stub even as PID 1, where a signal left at its default is dropped.
#[expect(unsafe_code, reason = "blocking and waiting for a signal needs libc; no handler code is installed")]
fn trap_sigterm(code: u8, seconds: u64) -> ExitCode {
    // SAFETY: the sigset is initialised by sigemptyset before use, the
    // pointers are to live locals, and no Rust code runs as a handler.
    let received = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGTERM);
        libc::sigprocmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
        say("trapping SIGTERM");
        let timeout = libc::timespec {
            tv_sec: libc::time_t::try_from(seconds).unwrap_or(libc::time_t::MAX),
            tv_nsec: 0,
        };
        libc::sigtimedwait(&raw const set, std::ptr::null_mut(), &raw const timeout)
    };
    if received == libc::SIGTERM {
        say(&format!("got SIGTERM, exiting {code}"));
        ExitCode::from(code)
    } else {
        ExitCode::SUCCESS
    }
}

/// One line of `key=value` pairs describing the container from inside.
fn probe() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| {
                line.strip_prefix(name).map(|rest| rest.trim_start_matches(':').trim().to_owned())
            })
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
            first_of(&[
                "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes",
                "/sys/fs/cgroup/memory.swap.max",
            ]),
        ),
        ("pids_limit", first_of(&["/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max"])),
        ("cpu_quota", first_of(&["/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu.max"])),
        ("cpu_period", first_of(&["/sys/fs/cgroup/cpu/cpu.cfs_period_us"])),
        ("docker_sock", std::path::Path::new("/var/run/docker.sock").exists().to_string()),
        ("pid1", first_of(&["/proc/1/comm"])),
        ("root_owner", owner("/")),
        ("root_writable", writable("/.berth-probe")),
        ("tmp_writable", writable("/tmp/.berth-probe")),
        ("home_writable", writable(&format!("{}/.berth-probe", std::env::var("HOME").unwrap_or_default()))),
    ];
    pairs
        .iter()
        .map(|(key, value)| format!("{key}={}", value.replace(' ', "_")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The uid that owns `path`, or the error kind.
fn owner(path: &str) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(metadata) => metadata.uid().to_string(),
        Err(err) => format!("{:?}", err.kind()),
    }
}

/// `true` when a file can be created (and is removed again) at `path`,
/// else the error kind.
fn writable(path: &str) -> String {
    match std::fs::write(path, b"probe") {
        Ok(()) => {
            let _ = std::fs::remove_file(path);
            "true".to_owned()
        }
        Err(err) => format!("false:{:?}", err.kind()),
    }
}

/// Writes `mib` MiB to `path`, one MiB at a time, and says how far it got.
fn fill(path: &str, mib: u64) -> ExitCode {
    use std::io::Write as _;
    let mut file = match std::fs::File::create(path) {
        Ok(file) => file,
        Err(err) => {
            say(&format!("fill {path}: 0 MiB: {err}"));
            return ExitCode::from(1);
        }
    };
    let block = vec![0x5a_u8; 1024 * 1024];
    for written in 0..mib {
        if let Err(err) = file.write_all(&block).and_then(|()| file.flush()) {
            say(&format!("fill {path}: {written} MiB: {err}"));
            return ExitCode::from(1);
        }
    }
    say(&format!("fill {path}: {mib} MiB"));
    ExitCode::SUCCESS
}

/// Runs the steps that follow the `/berth <command>` words of the prompt's
/// first line, after writing a summary that names them.
fn prompt_steps(prompt_file: &str, summary_file: &str) -> ExitCode {
    let prompt = match std::fs::read_to_string(prompt_file) {
        Ok(prompt) => prompt,
        Err(err) => return fail(&format!("read prompt {prompt_file}: {err}")),
    };
    // Berth's prompts mark the requester's words off in <github-request>;
    // a bare prompt is the comment itself, command first.
    let steps: Vec<String> = match prompt.split_once("<github-request>\n") {
        Some((_, request)) => {
            let first_line = request.lines().next().unwrap_or("");
            if first_line == "(empty)" {
                Vec::new()
            } else {
                first_line.split_whitespace().map(str::to_owned).collect()
            }
        }
        None => {
            let first_line = prompt.lines().find(|line| !line.trim().is_empty()).unwrap_or("");
            first_line.split_whitespace().skip(2).map(str::to_owned).collect()
        }
    };
    let summary = if steps.is_empty() {
        "The stub agent looked at the change and found nothing to say.".to_owned()
    } else {
        format!("The stub agent ran: `{}`.", steps.join(" "))
    };
    if let Err(err) = std::fs::write(summary_file, summary) {
        return fail(&format!("write summary {summary_file}: {err}"));
    }
    say(&format!("stub agent: {} step(s)", steps.len()));
    for step in steps.split(|arg| arg == "then") {
        if step.is_empty() {
            continue;
        }
        let code = run_step(step);
        if code != ExitCode::SUCCESS {
            return code;
        }
    }
    ExitCode::SUCCESS
}
