//! Hostile input against a real daemon: comments that copy Berth's marker.

use std::time::Duration;

use serde_json::Value;

use crate::running::Rig;

fn task_of(answer: &Value) -> String {
    assert_eq!(answer["outcome"], "queued", "{answer}");
    answer["task"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn berth_edits_only_its_own_comments_and_a_copied_marker_neither_is_overwritten_nor_blocks_the_report()
{
    let rig = Rig::start("own-comments", &[]).await;
    let task = task_of(
        &rig.deliver("issue_comment", "own-1", &rig.comment(7, true, "/berth review sleep 2", 9101)).await,
    );
    // The task id is public (the check run names it); two others post its marker first.
    let marker = format!("<!-- berth:task={task} -->");
    let by_person =
        rig.fake.add_comment(&rig.repo, 7, &format!("{marker}\nfake result by a person"), "mallory", "User");
    let by_bot = rig.fake.add_comment(
        &rig.repo,
        7,
        &format!("{marker}\nfake result by another app"),
        "other-app[bot]",
        "Bot",
    );
    let run = rig.outcome(&task, Duration::from_secs(90)).await;
    assert_eq!(run["conclusion"], "success", "{run}");
    rig.until("Berth's own result comment", Duration::from_secs(30), |state| {
        state.comments.values().any(|c| {
            c["user"]["login"] == "berth[bot]" && c["body"].as_str().is_some_and(|b| b.contains(&marker))
        })
    })
    .await;
    let (person, bot, own) = rig.fake.with(|state| {
        let own: Vec<Value> =
            state.comments.values().filter(|c| c["user"]["login"] == "berth[bot]").cloned().collect();
        (state.comments[&by_person].clone(), state.comments[&by_bot].clone(), own)
    });
    assert!(person["body"].as_str().unwrap().ends_with("fake result by a person"), "{person}");
    assert!(bot["body"].as_str().unwrap().ends_with("fake result by another app"), "{bot}");
    assert_eq!(own.len(), 1, "one result comment of Berth's own: {own:?}");
    assert!(own[0]["body"].as_str().unwrap().contains("stub agent ran"), "{own:?}");
    // No edit was even tried on the others' comments.
    let patched = rig.fake.with(|state| {
        state.requests.iter().filter(|r| r.method == "PATCH" && r.path.contains("/issues/comments/")).count()
    });
    assert_eq!(patched, 0);
}

/// Item 8: a worker writes only to its memory-backed scratch, capped, and
/// nothing it writes lands on the host's Docker storage.
#[tokio::test]
async fn a_worker_writes_only_to_capped_scratch_and_nothing_to_the_hosts_docker_storage() {
    use dispatcher::{DispatcherConfig, HardenedProfile};
    use tests::{Cleanup, STUB, dispatcher_with, task_labels, test_image, test_instance, unique_task_id};

    let dispatcher = dispatcher_with(DispatcherConfig {
        image: test_image().await.to_owned(),
        network: "none".to_owned(),
        profile: HardenedProfile::strict().with_memory(512 << 20).with_scratch(true, 64 << 20),
        entrypoint: Some(vec![STUB.to_owned()]),
        instance: test_instance(),
    })
    .await;
    let id = unique_task_id("scratch");
    let _cleanup = Cleanup::tasks(&[&id]);
    let steps = "fill /tmp/big 200 then fill /big 1 then fill /home/berth/notes 8 then sleep 0";
    let args: Vec<String> = steps.split(' ').map(str::to_owned).collect();
    let launched = dispatcher.launch(&task_labels(&id), &[], Some(args)).await.unwrap();
    let exit = dispatcher.wait_started(&launched.id).await.unwrap();
    let logs = dispatcher.logs_text(&launched.id).await.unwrap();
    // The first fill stops at the cap; `then` stops the steps at a failure, so run them one by one.
    assert_eq!(exit.code, 1, "{logs}");
    let first =
        logs.lines().find(|line| line.starts_with("fill /tmp/big")).unwrap_or_else(|| panic!("{logs}"));
    let written: u64 =
        first.split(": ").nth(1).and_then(|n| n.trim_end_matches(" MiB").parse().ok()).unwrap();
    assert!(written <= 64, "the scratch holds at most 64 MiB: {first}");
    assert!(first.contains("No space left on device"), "{first}");

    for (step, expected) in [
        ("fill /big 1", "Read-only file system"),
        ("fill /home/berth/notes 8", "fill /home/berth/notes: 8 MiB"),
    ] {
        let id = unique_task_id("scratch-step");
        let _cleanup = Cleanup::tasks(&[&id]);
        let args: Vec<String> = step.split(' ').map(str::to_owned).collect();
        let launched = dispatcher.launch(&task_labels(&id), &[], Some(args)).await.unwrap();
        dispatcher.wait_started(&launched.id).await.unwrap();
        let logs = dispatcher.logs_text(&launched.id).await.unwrap();
        assert!(logs.contains(expected), "{step}: {logs}");
        // What the container wrote to the host's storage: its writable layer.
        let docker = bollard::Docker::connect_with_unix_defaults().unwrap();
        let options = bollard::query_parameters::InspectContainerOptionsBuilder::new().size(true).build();
        let inspect = docker.inspect_container(launched.id.as_str(), Some(options)).await.unwrap();
        assert!(
            inspect.size_rw.unwrap_or(0) < 1 << 20,
            "{step}: {} bytes on the host",
            inspect.size_rw.unwrap_or(0)
        );
    }
}

/// Item 11: `berth logs` never lets a worker drive the operator's terminal.
#[tokio::test]
async fn berth_logs_removes_terminal_control_unless_raw() {
    use tests::{Cleanup, dispatcher, task_labels, unique_task_id, workspace_binaries};
    let dispatcher = dispatcher().await;
    let id = unique_task_id("escapes");
    let _cleanup = Cleanup::tasks(&[&id]);
    let hostile = "\u{1b}]0;pwned-title\u{7}\u{1b}]52;c;cGFzdGU=\u{7}red\u{1b}[31m text\u{1b}[2J\rover";
    let args = vec!["print".to_owned(), hostile.to_owned()];
    let launched = dispatcher.launch(&task_labels(&id), &[], Some(args)).await.unwrap();
    dispatcher.wait(&launched.id).await.unwrap();
    let run = |raw: bool| {
        let task = id.to_string();
        move || {
            let mut command = std::process::Command::new(workspace_binaries().join("berth"));
            command.args(["logs", &task]);
            if raw {
                command.arg("--raw");
            }
            command.output().unwrap().stdout
        }
    };
    let clean = tokio::task::spawn_blocking(run(false)).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&clean), "red textover\n");
    let raw = tokio::task::spawn_blocking(run(true)).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&raw), format!("{hostile}\n"), "--raw keeps every byte");
    dispatcher.remove(&launched.id).await.unwrap();
}
