//! Dispatcher benchmark: N trivial hardened tasks (create, start, wait,
//! remove) through Berth's dispatcher, through raw bollard calls, through
//! `docker run --rm`, and through four `docker` CLI calls, interleaved in
//! one run so the machine's drift hits all four alike.
//!
//! `cargo bench -p tests --bench dispatch` (N from `BERTH_BENCH_N`, default 30).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark prints its table and stops at the first error"
)]

use std::time::{Duration, Instant};

use tests::{
    STUB, dispatcher, docker_cli as docker, hardened_cli_flags, task_labels, test_image, unique_task_id,
};

const METHODS: [&str; 4] = ["berth dispatcher", "raw bollard", "docker run --rm", "docker CLI x4"];

#[tokio::main]
async fn main() {
    let n: usize =
        std::env::var(core_types::env_names::BERTH_BENCH_N).ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let image = test_image().await.to_owned();
    let dispatcher = dispatcher().await;
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
                    let launched = dispatcher
                        .launch(&task_labels(&task_id), &[], Some(vec!["exit".into(), "0".into()]))
                        .await
                        .expect("launch");
                    let exit = dispatcher.wait_started(&launched.id).await.expect("wait");
                    assert_eq!(exit.code, 0);
                    dispatcher.remove(&launched.id).await.expect("remove");
                }
                1 => tests::bench::raw_bollard_task(&raw, &image, &name).await,
                2 => {
                    let mut args = vec!["run".to_owned(), "--rm".to_owned(), format!("--name={name}")];
                    args.extend(flags.iter().cloned());
                    args.extend([format!("--entrypoint={STUB}"), image.clone(), "exit".into(), "0".into()]);
                    docker(&args);
                }
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

    let results: Vec<_> = samples.iter_mut().map(|samples| tests::bench::stats(samples)).collect();
    let (raw_mean, raw_median, _) = results[1];
    println!("{n} trivial hardened tasks per method (create, start, wait, remove), interleaved\n");
    println!("| method | mean ms | median ms | p90 ms | mean / raw bollard | median / raw bollard |");
    println!("|---|---|---|---|---|---|");
    for (method, (mean, median, p90)) in METHODS.iter().zip(&results) {
        println!(
            "| {method} | {mean:.1} | {median:.1} | {p90:.1} | {:.3} | {:.3} |",
            mean / raw_mean,
            median / raw_median
        );
    }
}
