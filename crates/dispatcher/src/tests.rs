use std::collections::HashSet;

use core_types::{TaskId, TaskKind, TaskLabels};
use proptest::prelude::*;

use crate::docker::parse_time;
use crate::{
    Capabilities, ContainerId, DispatchError, DispatcherConfig, HardenedProfile, MAX_CONTAINER_NAME_LEN,
    Protection, container_name,
};

#[test]
fn a_docker_id_prints_short_and_a_job_name_whole() {
    let docker = ContainerId::from_engine(format!("3f2a{}", "0".repeat(60)));
    assert_eq!(docker.to_string(), "3f2a00000000");
    // Kubernetes Job names share their first 12 characters.
    let job = ContainerId::from_engine("berth-review-o-r-7-ad11d67f".to_owned());
    assert_eq!(job.to_string(), "berth-review-o-r-7-ad11d67f");
}

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
    assert_eq!(tail.dropped(), 5 + (1 << 20) + 10 - 16, "every byte not kept is counted");
    assert_eq!(tail.into_bytes(), b"xxxxxx{\"end\":1}\n");
    // Less than the limit is kept whole.
    let mut tail = TailBuffer::new(64);
    tail.push(b"short\n");
    assert_eq!(tail.dropped(), 0);
    assert_eq!(tail.into_bytes(), b"short\n");
    // Chunks of every size around the limit, against a plain copy.
    for max in [1, 7, 64, 100] {
        let mut tail = TailBuffer::new(max);
        let mut all = Vec::new();
        for n in 0..400_usize {
            let chunk: Vec<u8> = (0..(n * 37) % 150).map(|i| ((n + i) % 251) as u8).collect();
            tail.push(&chunk);
            all.extend_from_slice(&chunk);
            assert_eq!(tail.dropped(), all.len().saturating_sub(max) as u64, "max {max}, chunk {n}");
        }
        assert_eq!(tail.into_bytes(), all[all.len().saturating_sub(max)..], "max {max}");
    }
}

/// The buffer never holds more than its limit, so reading a long output
/// costs the limit in memory and no more.
#[test]
fn the_tail_buffer_never_grows_past_its_limit() {
    use crate::dispatcher::TailBuffer;
    let max = 5 << 20;
    let mut tail = TailBuffer::new(max);
    let chunk = vec![b'x'; 40_000];
    for _ in 0..800 {
        tail.push(&chunk);
        assert!(tail.bytes_held_room() <= max, "room {} past {max}", tail.bytes_held_room());
    }
    assert_eq!(tail.into_bytes().len(), max);
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
    let long = TaskLabels { task_id: TaskId::new("t".repeat(63)).unwrap(), ..labels.clone() };
    let spec_of_long = crate::dispatcher::spec_for(&config, &long, &[], None);
    assert_eq!(spec_of_long.name, container_name(&long.task_id));
    assert_eq!(spec_of_long.name.len(), MAX_CONTAINER_NAME_LEN);
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
        "FROM scratch\nCOPY rootfs/ /\nCOPY --chown=65532:65532 owned/srv/clone-cache/ /srv/clone-cache/\nENV HOME=\"/home/berth\"\nUSER 65532:65532\nWORKDIR /home/berth\nENTRYPOINT [\"/usr/local/bin/berth-worker\"]\n"
    );
}

#[test]
fn only_an_engine_that_is_away_counts_as_transient() {
    use std::io::{Error as IoError, ErrorKind};

    use crate::error::{DispatchError, EngineError};
    let io =
        |kind: ErrorKind| EngineError::docker(bollard::errors::Error::IOError { err: IoError::from(kind) });
    let answered = |status_code: u16, message: &str| {
        EngineError::docker(bollard::errors::Error::DockerResponseServerError {
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

/// Whether `name` is a DNS label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63.
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let end = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= MAX_CONTAINER_NAME_LEN
        && bytes.iter().all(inner)
        && bytes.first().is_some_and(end)
        && bytes.last().is_some_and(end)
}

fn name_of(id: &str) -> String {
    container_name(&TaskId::new(id).unwrap())
}

#[test]
fn short_task_ids_keep_the_name_berth_always_gave() {
    assert_eq!(name_of("t-1"), "berth-t-1");
    let id = "a".repeat(56);
    assert_eq!(name_of(&id), format!("berth-{id}"));
    assert_eq!(name_of(&id).len(), 62);
}

#[test]
fn long_task_ids_and_ids_ending_in_a_dash_get_a_hashed_name_of_63() {
    let ids = ["a".repeat(57), "b".repeat(63), "1-".repeat(31), "abc-".to_owned(), "x--".to_owned()];
    for id in ids {
        let name = name_of(&id);
        assert!(is_dns_label(&name), "{id} -> {name}");
        if id.len() > 56 || id.ends_with('-') {
            assert_eq!(name.len(), MAX_CONTAINER_NAME_LEN, "{id} -> {name}");
        }
    }
    // Readable: the start of the id stays in front of the hash.
    let id = format!("implement-{}-42-0123abcd", "r".repeat(40));
    let name = name_of(&id);
    assert!(name.starts_with("berth-implement-rrrr"), "{name}");
    // Stable across builds: a name must not change when Berth is rebuilt.
    assert_eq!(name_of(&"a".repeat(57)), "berth-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-1e9d15151fbbabc3");
    assert_eq!(name_of("abc-"), "berth-abc-8b5241377956ce828701cb8faabedabbcdb06b34e0db0f8c8474b");
}

fn task_id_strategy() -> impl Strategy<Value = String> {
    // Every valid task id: `[a-z0-9-]`, not starting with `-`, 1 to 63 long.
    "[a-z0-9][a-z0-9-]{0,62}"
}

proptest! {
    #[test]
    fn every_task_gets_a_dns_label_name(id in task_id_strategy()) {
        let name = name_of(&id);
        prop_assert!(is_dns_label(&name), "{} -> {}", id, name);
    }

    #[test]
    fn distinct_tasks_get_distinct_names(a in task_id_strategy(), b in task_id_strategy()) {
        prop_assume!(a != b);
        prop_assert_ne!(name_of(&a), name_of(&b));
    }

    #[test]
    fn distinct_tasks_sharing_a_long_start_get_distinct_names(
        start in "[a-z0-9][a-z0-9-]{39,55}",
        a in "[a-z0-9-]{1,7}",
        b in "[a-z0-9-]{1,7}",
    ) {
        prop_assume!(a != b);
        prop_assert_ne!(name_of(&format!("{start}{a}")), name_of(&format!("{start}{b}")));
    }
}

#[test]
fn many_similar_long_task_ids_never_share_a_name() {
    let mut names = HashSet::new();
    for n in 0..20_000 {
        // 58 to 62 characters, all alike in the 40 a name keeps.
        let id = format!("review-{}-{n}", "a".repeat(45));
        assert!(names.insert(name_of(&id)), "{id}");
    }
}

#[test]
fn the_strict_profile_asks_for_every_protection() {
    assert_eq!(HardenedProfile::strict().protections(), Protection::ALL);
    let writable = HardenedProfile::strict().with_scratch(false, 0);
    let asked = writable.protections();
    assert!(!asked.contains(&Protection::ReadOnlyRoot) && !asked.contains(&Protection::ScratchTmpfs));
    let root = HardenedProfile { user: "0:0".to_owned(), ..HardenedProfile::strict() };
    assert!(!root.protections().contains(&Protection::NonRootUser));
}

#[test]
fn capabilities_name_what_a_profile_misses() {
    let profile = HardenedProfile::strict();
    assert!(Capabilities::all().missing_for(&profile).is_empty());
    let lacking = Capabilities::all().without(Protection::ReadOnlyRoot).without(Protection::SwapLimit);
    assert!(!lacking.read_only_root && !lacking.swap_limit && lacking.memory_limit);
    assert_eq!(lacking.missing_for(&profile), [Protection::SwapLimit, Protection::ReadOnlyRoot]);
    let err = DispatchError::ProfileUnsupported {
        engine: "swarm".to_owned(),
        missing: lacking.missing_for(&profile),
    };
    assert_eq!(
        err.to_string(),
        "the swarm engine does not enforce a swap limit and a read-only root filesystem that the worker \
         profile asks for; use an engine that does, or relax the profile"
    );
    assert!(!err.is_transient());
}
