use core_types::{TaskId, TaskKind, TaskLabels};

use crate::docker::parse_time;
use crate::{DispatcherConfig, HardenedProfile};

#[test]
fn engine_times_parse_and_zero_time_is_none() {
    let time = parse_time("2026-11-29T03:19:31.5Z").unwrap();
    let since_epoch = time.duration_since(std::time::UNIX_EPOCH).unwrap();
    assert_eq!(since_epoch.as_secs(), 1_795_922_371);
    assert_eq!(since_epoch.subsec_millis(), 500);
    assert_eq!(parse_time("1970-01-01T00:00:00Z").unwrap(), std::time::UNIX_EPOCH);
    assert_eq!(parse_time("0001-01-01T00:00:00Z"), None);
    assert_eq!(parse_time("garbage"), None);
}

#[test]
fn strict_profile_is_the_contract_default() {
    let profile = HardenedProfile::strict();
    assert_eq!(profile.memory_bytes, 2_147_483_648);
    assert_eq!(profile.memory_swap_bytes, profile.memory_bytes);
    assert_eq!(profile.nano_cpus, 2_000_000_000);
    assert!(profile.cap_add.is_empty());
    assert!(profile.no_new_privileges && profile.init);
    assert!(!profile.user.starts_with("0") && profile.user != "root");
    assert_eq!((profile.log_max_bytes, profile.log_max_files), (10 << 20, 3), "logs bounded on disk");
    assert_eq!(profile.clone().with_log_limits(1 << 20, 2).log_max_files, 2);
    assert_eq!(profile.with_privilege_drop_caps().cap_add, ["CHOWN", "FOWNER", "SETUID", "SETGID"]);
}

#[test]
fn the_tail_buffer_keeps_only_the_last_bytes_however_they_come() {
    use crate::dispatcher::TailBuffer;
    // Many small chunks: 10 MiB through a 1 KiB tail.
    let mut tail = TailBuffer::new(1024);
    let mut all = Vec::new();
    for n in 0..10_240_u32 {
        let chunk: Vec<u8> = (0..1024).map(|i| ((n + i) % 251) as u8).collect();
        tail.push(&chunk);
        all.extend_from_slice(&chunk[..]);
        if n % 1000 == 0 {
            all.drain(..all.len().saturating_sub(4096));
        }
    }
    assert_eq!(tail.into_bytes(), all[all.len() - 1024..]);
    // One line far longer than the limit.
    let mut tail = TailBuffer::new(16);
    tail.push(b"head ");
    tail.push(&[b'x'; 1 << 20]);
    tail.push(b"{\"end\":1}\n");
    assert_eq!(tail.into_bytes(), b"xxxxxx{\"end\":1}\n");
    // Less than the limit is kept whole.
    let mut tail = TailBuffer::new(64);
    tail.push(b"short\n");
    assert_eq!(tail.into_bytes(), b"short\n");
}

#[test]
fn container_spec_carries_name_labels_env_and_profile() {
    let labels = TaskLabels {
        task_id: TaskId::new("t-1").unwrap(),
        kind: TaskKind::Review,
        repo: "octo/repo".into(),
        number: 1,
        head_sha: None,
        delivery: None,
        deadline_unix: 10,
        check_run: None,
        installation: None,
    };
    let config = DispatcherConfig {
        image: "img".into(),
        network: "none".into(),
        profile: HardenedProfile::strict(),
        entrypoint: None,
        instance: "default".into(),
    };
    let spec = crate::dispatcher::spec_for(&config, &labels, &[("A", "b".into())], None);
    assert_eq!(spec.name, "berth-t-1");
    assert_eq!(spec.env, ["A=b"]);
    assert_eq!(spec.labels["berth.task-id"], "t-1");
    assert_eq!(spec.profile, HardenedProfile::strict());
}

#[test]
fn ldd_output_lists_libraries_and_the_loader() {
    let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
    let paths: Vec<_> =
        crate::image::parse_ldd(output).into_iter().map(|p| p.display().to_string()).collect();
    assert_eq!(
        paths,
        [
            "/lib/x86_64-linux-gnu/libgcc_s.so.1",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2"
        ]
    );
}

#[test]
fn image_dockerfile_is_scratch_with_a_non_root_user() {
    let mut context = crate::image::ImageContext::new();
    context.entrypoint(&["/usr/local/bin/berth-worker"]);
    assert_eq!(
        context.dockerfile(),
        "FROM scratch\nCOPY rootfs/ /\nENV HOME=\"/home/berth\"\nUSER 65532:65532\nWORKDIR /home/berth\nENTRYPOINT [\"/usr/local/bin/berth-worker\"]\n"
    );
}

#[test]
fn only_an_engine_that_is_away_counts_as_transient() {
    use std::io::{Error as IoError, ErrorKind};

    use crate::error::{DispatchError, DockerError};
    let io = |kind: ErrorKind| DockerError(bollard::errors::Error::IOError { err: IoError::from(kind) });
    let answered = |status_code: u16, message: &str| {
        DockerError(bollard::errors::Error::DockerResponseServerError {
            status_code,
            message: message.to_owned(),
        })
    };
    assert!(io(ErrorKind::ConnectionRefused).is_transient());
    assert!(io(ErrorKind::NotFound).is_transient(), "the socket is gone while dockerd restarts");
    assert!(!io(ErrorKind::PermissionDenied).is_transient(), "a socket we may not open stays closed");
    assert!(answered(503, "daemon is not ready").is_transient());
    assert!(answered(500, "the daemon is shutting down").is_transient());
    assert!(!answered(500, "invalid mount config").is_transient());
    assert!(!answered(409, "name in use").is_transient());
    let create =
        |source| DispatchError::CreateFailed { task_id: core_types::TaskId::new("t-1").unwrap(), source };
    assert!(create(io(ErrorKind::ConnectionReset)).is_transient());
    assert!(!create(answered(400, "bad request")).is_transient());
    assert!(!DispatchError::ImageMissing { image: "x".to_owned() }.is_transient());
}
