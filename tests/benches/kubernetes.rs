//! Per-task overhead of the Kubernetes backend: N trivial hardened tasks
//! (create, start, wait, remove) through Berth's dispatcher on the Docker
//! engine, through the same dispatcher on the Kubernetes engine over the
//! project's fake API server (whose kubelet runs each pod as a real Docker
//! container), through raw bollard calls, and through four `docker` CLI
//! calls, interleaved round by round in one run.
//!
//! `cargo bench -p tests --bench kubernetes` (N from `BERTH_BENCH_N`, default 20).
//!
//! What the Kubernetes figure holds: the API round trips of the backend
//! (Job, Secret, unsuspend, watches, pod status, delete) and the fake
//! cluster's own controller and kubelet, which poll; a real cluster's
//! scheduler and kubelet add more. It is the backend's overhead on this
//! machine, not a prediction of a cluster's.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark prints its table and stops at the first error"
)]

use std::time::{Duration, Instant};

use dispatcher::{Dispatcher, DispatcherConfig, HardenedProfile};
use kubernetes::{ImagePull, KubernetesEngine, KubernetesOptions};
use tests::fake_kube::FakeKube;
use tests::{STUB, docker_cli as docker, hardened_cli_flags, task_labels, test_image, unique_task_id};

const METHODS: [&str; 4] =
    ["berth on docker", "berth on kubernetes (fake cluster)", "raw bollard", "docker CLI x4"];

const NETWORK: &str = "berth-bench";

#[tokio::main]
async fn main() {
    let n: usize =
        std::env::var(core_types::env_names::BERTH_BENCH_N).ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let image = test_image().await.to_owned();
    let on_docker = tests::dispatcher().await;
    let fake = FakeKube::start().await;
    let mut options = KubernetesOptions::new(NETWORK);
    options.image_pull = ImagePull::Never;
    let engine = KubernetesEngine::new(fake.client(), fake.namespace(), options);
    let on_kube = Dispatcher::checked(
        engine,
        DispatcherConfig {
            image: image.clone(),
            network: NETWORK.to_owned(),
            profile: KubernetesEngine::fit_profile(HardenedProfile::strict()),
            entrypoint: Some(vec![STUB.to_owned()]),
            instance: tests::test_instance(),
        },
    )
    .expect("the fitted profile is one the Kubernetes engine enforces");
    let raw = bollard::Docker::connect_with_unix_defaults()
        .expect("socket")
        .negotiate_version()
        .await
        .expect("engine");
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); METHODS.len()];
    let flags = hardened_cli_flags();

    // One warm-up round of each, not counted.
    for round in 0..=n {
        for (method, samples) in samples.iter_mut().enumerate() {
            let name = format!("berth-bench-{}-{round}-{method}", std::process::id());
            let started = Instant::now();
            match method {
                0 => {
                    let task_id = unique_task_id("bench");
                    let launched = on_docker
                        .launch(&task_labels(&task_id), &[], Some(vec!["exit".into(), "0".into()]))
                        .await
                        .expect("launch");
                    assert_eq!(on_docker.wait_started(&launched.id).await.expect("wait").code, 0);
                    on_docker.remove(&launched.id).await.expect("remove");
                }
                1 => {
                    let task_id = unique_task_id("bench");
                    let launched = on_kube
                        .launch(&task_labels(&task_id), &[], Some(vec!["exit".into(), "0".into()]))
                        .await
                        .expect("launch");
                    assert_eq!(on_kube.wait_started(&launched.id).await.expect("wait").code, 0);
                    on_kube.remove(&launched.id).await.expect("remove");
                }
                2 => tests::bench::raw_bollard_task(&raw, &image, &name).await,
                _ => {
                    let mut args = vec!["create".to_owned(), format!("--name={name}")];
                    args.extend(flags.iter().cloned());
                    args.extend([format!("--entrypoint={STUB}"), image.clone(), "exit".into(), "0".into()]);
                    let id = docker(&args);
                    docker(&["start".into(), id.clone()]);
                    assert_eq!(docker(&["wait".into(), id.clone()]), "0");
                    docker(&["rm".into(), id]);
                }
            }
            if round > 0 {
                samples.push(started.elapsed());
            }
        }
    }
    fake.shutdown().await;

    let results: Vec<_> = samples.iter_mut().map(|samples| tests::bench::stats(samples)).collect();
    let (docker_mean, docker_median, _) = results[0];
    let (raw_mean, _, _) = results[2];
    println!("{n} trivial hardened tasks per method (create, start, wait, remove), interleaved\n");
    println!(
        "| method | mean ms | median ms | p90 ms | mean / berth on docker | median / berth on docker | mean / raw bollard |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (method, (mean, median, p90)) in METHODS.iter().zip(&results) {
        println!(
            "| {method} | {mean:.1} | {median:.1} | {p90:.1} | {:.2} | {:.2} | {:.2} |",
            mean / docker_mean,
            median / docker_median,
            mean / raw_mean,
        );
    }
}
