//! What the dispatcher benchmarks share: the same trivial hardened task by
//! raw bollard calls, and the summary of a set of samples.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;

use crate::{STUB, hardened_host_config};

/// One trivial hardened task (`berth-stub exit 0`) by raw bollard calls:
/// create, start, wait, remove, with the hardened profile the benchmarks share.
///
/// # Panics
/// When the engine refuses any step or the task does not exit 0.
pub async fn raw_bollard_task(docker: &bollard::Docker, image: &str, name: &str) {
    let host_config = hardened_host_config();
    let body = ContainerCreateBody {
        image: Some(image.into()),
        user: Some("65532:65532".into()),
        entrypoint: Some(vec![STUB.into()]),
        cmd: Some(vec!["exit".into(), "0".into()]),
        labels: Some(HashMap::from([("berth.bench".into(), "true".into())])),
        host_config: Some(host_config),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::new().name(name).build();
    let created = docker.create_container(Some(options), body).await.expect("create");
    docker.start_container(&created.id, None).await.expect("start");
    let wait = WaitContainerOptionsBuilder::new().condition("not-running").build();
    let exit =
        docker.wait_container(&created.id, Some(wait)).next().await.expect("wait answers").expect("exit 0");
    assert_eq!(exit.status_code, 0);
    let remove = RemoveContainerOptionsBuilder::new().force(true).build();
    docker.remove_container(&created.id, Some(remove)).await.expect("remove");
}

/// Mean, median and p90 of `samples`, in milliseconds (sorts them).
pub fn stats(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64;
    let median = ms(samples[samples.len() / 2]);
    let p90 = ms(samples[(samples.len() * 9 / 10).min(samples.len() - 1)]);
    (mean, median, p90)
}
