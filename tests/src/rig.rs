//! A daemon with everything it talks to, for end-to-end tests and
//! benchmarks: a real `berth serve`, the fake GitHub, and a `git daemon`
//! holding one seeded repository, with its containers removed on drop.
//!
//! The daemon runs its workers on the machine's Docker Engine, on a private
//! engine ([`Rig::start_on_engine`]), or as Kubernetes Jobs on a fake API
//! server of its own ([`Rig::start_on_kubernetes`]), whose kubelet runs each
//! pod as a container on the machine's engine.

#![allow(clippy::unwrap_used, reason = "test support: a failed unwrap is a failed test")]

use std::time::Duration;

use fake_github::FakeGitHub;
use serde_json::{Value, json};

use crate::fake_kube::{FakeKube, POD_LABEL, SERVER_LABEL};
use crate::git_server::{GitServer, SeedRepo};
use crate::{Daemon, github_signature, http, rsa_key, test_image};

/// The webhook secret of every rig.
pub const SECRET: &str = "e2e-running-webhook-secret";
/// The admin token of every rig.
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";
/// The stub agent command of a rig unless its settings say otherwise.
pub const AGENT: &str = "/usr/local/bin/berth-stub prompt-steps {prompt_file} {summary_file}";
/// `BERTH_WORKER_NETWORK` of a rig on Kubernetes: only a name there (the
/// pods' `berth.network` label). The fake kubelet puts every pod on Docker's
/// default bridge, as the Docker rig's workers are: the git server listens
/// on that bridge's gateway, and the fake GitHub is the daemon's alone
/// (workers never call GitHub).
pub const KUBE_NETWORK: &str = "berth-workers";

/// One daemon, its fake GitHub and a git server with one repository.
pub struct Rig {
    pub fake: FakeGitHub,
    pub daemon: Daemon,
    pub server: GitServer,
    pub seed: SeedRepo,
    pub repo: String,
    pub repo_name: String,
    pub main_sha: String,
    pub head_sha: String,
    pub env: Vec<(&'static str, String)>,
    /// GitHub's id of the repository, sent in payloads when set: without it
    /// (the default) a task gets no clone cache.
    pub repo_id: Option<u64>,
    /// `DOCKER_HOST` of the engine the daemon runs on, when not the machine's.
    docker_host: Option<String>,
    /// The fake Kubernetes the daemon runs its workers on, when it does;
    /// dropped after the daemon, removing every container its kubelet made.
    kube: Option<FakeKube>,
    _dir: tempfile::TempDir,
    _cleanup: RepoCleanup,
}

/// Removes every container of a test repository, also when the test fails.
pub struct RepoCleanup(String, Option<String>);

impl RepoCleanup {
    /// Cleans up the containers and mirror volumes of `repo` on the machine's engine.
    pub fn new(repo: &str) -> Self {
        Self(repo.to_owned(), None)
    }
}

impl Drop for RepoCleanup {
    fn drop(&mut self) {
        let repo = self.0.clone();
        let host = self.1.clone();
        let handle = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let Ok(docker) = docker_client(host.as_deref()) else { return };
                let filters =
                    std::collections::HashMap::from([("label", vec![format!("berth.repo={repo}")])]);
                let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build();
                for container in docker.list_containers(Some(options)).await.unwrap_or_default() {
                    let remove =
                        bollard::query_parameters::RemoveContainerOptionsBuilder::new().force(true).build();
                    let _ = docker.remove_container(&container.id.unwrap_or_default(), Some(remove)).await;
                }
                // The clone cache's mirrors of the repository, once no container holds them.
                let options =
                    bollard::query_parameters::ListVolumesOptionsBuilder::new().filters(&filters).build();
                if let Ok(listed) = docker.list_volumes(Some(options)).await {
                    for volume in listed.volumes.unwrap_or_default() {
                        let _ = docker
                            .remove_volume(
                                &volume.name,
                                None::<bollard::query_parameters::RemoveVolumeOptions>,
                            )
                            .await;
                    }
                }
            });
        });
        let _ = handle.join();
    }
}

/// A client of the engine at `host` (`unix://...`), or of the machine's.
fn docker_client(host: Option<&str>) -> Result<bollard::Docker, bollard::errors::Error> {
    match host.and_then(|host| host.strip_prefix("unix://")) {
        Some(socket) => bollard::Docker::connect_with_unix(socket, 120, bollard::API_DEFAULT_VERSION),
        None => bollard::Docker::connect_with_unix_defaults(),
    }
}

impl Rig {
    /// Starts everything; `settings` override the defaults.
    pub async fn start(name: &str, settings: &[(&'static str, String)]) -> Rig {
        Rig::start_on(name, settings, None, None).await
    }

    /// Starts everything with the daemon on `BERTH_ENGINE=kubernetes`
    /// against a fake Kubernetes API server of this rig's own (its
    /// kubeconfig in a file named by `KUBECONFIG`).
    pub async fn start_on_kubernetes(name: &str, settings: &[(&'static str, String)]) -> Rig {
        let kube = FakeKube::start().await;
        Rig::start_on(name, settings, None, Some(kube)).await
    }

    /// Starts everything with the daemon and its workers on `engine`.
    pub async fn start_on_engine(
        name: &str,
        settings: &[(&'static str, String)],
        engine: &crate::private_engine::PrivateEngine,
    ) -> Rig {
        Rig::start_on(name, settings, Some((engine.host(), engine.gateway())), None).await
    }

    async fn start_on(
        name: &str,
        settings: &[(&'static str, String)],
        engine: Option<(String, std::net::IpAddr)>,
        kube: Option<FakeKube>,
    ) -> Rig {
        let image = test_image().await.to_owned();
        let dir = tempfile::tempdir().unwrap();
        let key = rsa_key(dir.path());
        let fake = FakeGitHub::start().await.unwrap();
        let server = match &engine {
            Some((_, gateway)) => GitServer::start_on(*gateway).await,
            None => GitServer::start().await,
        };
        let docker_host = engine.map(|(host, _)| host);
        let repo_name = format!("{name}-{}", std::process::id());
        let repo = format!("e2e/{repo_name}");
        let seed = server.repo(&format!("{repo_name}.git"));
        let main_sha = seed.commit("main", "README.md", "hello\n");
        let head_sha = seed.commit("feature", "feature.txt", "a change\n");
        fake.set_branch(&repo, "main", &main_sha);
        fake.set_pull(&repo, 7, &head_sha, "feature", Some(&repo));
        let mut env: Vec<(&'static str, String)> = vec![
            ("BERTH_WEBHOOK_SECRET", SECRET.to_owned()),
            ("BERTH_GITHUB_APP_ID", "4242".to_owned()),
            ("BERTH_GITHUB_PRIVATE_KEY_FILE", key.display().to_string()),
            ("BERTH_GITHUB_API_URL", fake.url()),
            ("BERTH_STATE_DIR", dir.path().join("state").display().to_string()),
            ("BERTH_WORKER_IMAGE", image),
            ("BERTH_WORKER_NETWORK", "bridge".to_owned()),
            ("BERTH_WORKER_MEMORY", "256m".to_owned()),
            ("BERTH_AGENT_COMMAND", AGENT.to_owned()),
            ("BERTH_STOP_GRACE", "4s".to_owned()),
            ("BERTH_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
            ("RUST_LOG", "info,api=debug".to_owned()),
            ("BERTH_INSTANCE", repo_name.clone()),
        ];
        if let Some(host) = &docker_host {
            env.push(("DOCKER_HOST", host.clone()));
        }
        if let Some(kube) = &kube {
            let kubeconfig = dir.path().join("kubeconfig");
            std::fs::write(&kubeconfig, kube.kubeconfig()).unwrap();
            env.retain(|(key, _)| *key != "BERTH_WORKER_NETWORK");
            env.extend([
                ("BERTH_ENGINE", "kubernetes".to_owned()),
                ("BERTH_KUBE_NAMESPACE", kube.namespace()),
                ("KUBECONFIG", kubeconfig.display().to_string()),
                ("BERTH_WORKER_NETWORK", KUBE_NETWORK.to_owned()),
            ]);
        }
        for (key, value) in settings {
            env.retain(|(existing, _)| existing != key);
            env.push((key, value.clone()));
        }
        let daemon = Daemon::start(&env).await;
        let cleanup = RepoCleanup(repo.clone(), docker_host.clone());
        Rig {
            fake,
            daemon,
            server,
            seed,
            repo,
            repo_name,
            main_sha,
            head_sha,
            env,
            repo_id: None,
            docker_host,
            kube,
            _dir: dir,
            _cleanup: cleanup,
        }
    }

    /// SIGKILLs the daemon (nothing of it runs after this returns).
    pub async fn kill_daemon(&mut self) {
        let _ = self.daemon.child.start_kill();
        let _ = self.daemon.child.wait().await;
    }

    /// Starts the daemon again on the same journal and settings.
    pub async fn start_daemon(&mut self) {
        self.daemon = Daemon::start(&self.env).await;
    }

    /// The repository object of a payload.
    pub fn repository(&self) -> Value {
        let mut repository = json!({"full_name": self.repo, "clone_url": self.server.url(&format!("{}.git", self.repo_name)), "default_branch": "main"});
        if let Some(id) = self.repo_id {
            repository["id"] = json!(id);
        }
        repository
    }

    /// `/berth ...` commented on pull request 7 (or issue `number`) by a trusted OWNER.
    pub fn comment(&self, number: u64, on_pull: bool, body: &str, comment_id: u64) -> Value {
        let mut issue = json!({"number": number, "title": "Make it better", "body": "Please."});
        if on_pull {
            issue["pull_request"] = json!({"url": "x"});
        }
        json!({
            "action": "created",
            "comment": {"id": comment_id, "body": body, "user": {"login": "alice", "type": "User"}, "author_association": "OWNER"},
            "issue": issue,
            "repository": self.repository(),
            "sender": {"login": "alice", "type": "User"},
            "installation": {"id": 77}
        })
    }

    /// Sends a signed delivery; returns the 202 body.
    pub async fn deliver(&self, event: &str, delivery: &str, payload: &Value) -> Value {
        let body = serde_json::to_vec(payload).unwrap();
        let headers = [
            ("X-GitHub-Event", event.to_owned()),
            ("X-GitHub-Delivery", delivery.to_owned()),
            ("X-Hub-Signature-256", github_signature(SECRET, &body)),
            ("Content-Type", "application/json".to_owned()),
        ];
        let (status, text) = http(self.daemon.addr, "POST", "/webhook", &headers, &body).await.unwrap();
        assert_eq!(status, 202, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Waits until `done` holds on the fake's state (or fails after `limit`).
    pub async fn until(&self, what: &str, limit: Duration, done: impl Fn(&fake_github::FakeState) -> bool) {
        let started = std::time::Instant::now();
        while !self.fake.with(|state| done(state)) {
            assert!(
                started.elapsed() < limit,
                "timed out waiting for {what}\nrequests: {:#?}\ndaemon log:\n{}",
                self.fake.with(|state| state
                    .requests
                    .iter()
                    .map(|r| format!("{} {} {}", r.method, r.path, r.status))
                    .collect::<Vec<_>>()),
                self.daemon.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The completed check run of `task`.
    pub fn completed(&self, task: &str) -> Option<Value> {
        self.fake.with(|state| {
            state
                .check_runs
                .values()
                .find(|run| run["external_id"] == task && run["status"] == "completed")
                .cloned()
        })
    }

    /// Waits for the completed check run of `task` and returns it.
    pub async fn outcome(&self, task: &str, limit: Duration) -> Value {
        self.until(&format!("task {task} to complete"), limit, |state| {
            state.check_runs.values().any(|run| run["external_id"] == task && run["status"] == "completed")
        })
        .await;
        self.completed(task).unwrap()
    }

    /// Tasks in the order their workers started: the order their check runs
    /// were marked in progress (a run is opened earlier, while a task waits).
    pub fn started_order(&self) -> Vec<String> {
        self.fake.with(|state| {
            state
                .requests
                .iter()
                .filter(|request| request.method == "PATCH" && request.body["status"] == "in_progress")
                .filter_map(|request| {
                    let id: u64 = request.path.rsplit('/').next()?.parse().ok()?;
                    Some(state.check_runs.get(&id)?["external_id"].as_str()?.to_owned())
                })
                .collect()
        })
    }

    /// Comments that carry `task`'s marker.
    pub fn comments_of(&self, task: &str) -> Vec<Value> {
        let marker = format!("<!-- berth:task={task} -->");
        self.fake.with(|state| {
            state
                .comments
                .values()
                .filter(|c| c["body"].as_str().is_some_and(|b| b.contains(&marker)))
                .cloned()
                .collect()
        })
    }

    /// Waits until at least `count` of this rig's workers run (or fails
    /// after `limit`); returns the running ones.
    pub async fn wait_running(
        &self,
        count: usize,
        limit: Duration,
    ) -> Vec<bollard::models::ContainerSummary> {
        self.wait_running_where(count, limit, |_| true).await
    }

    /// Waits until `task`'s worker runs (or fails after `limit`).
    pub async fn wait_task_running(&self, task: &str, limit: Duration) {
        let name = format!("berth-{task}");
        let on_kube = self.kube.is_some();
        let named = |c: &bollard::models::ContainerSummary| {
            if on_kube {
                // The kubelet's container of the Job's pod, `<job>-<suffix>`.
                let job = dispatcher::container_name(&core_types::TaskId::new(task).unwrap());
                c.labels.as_ref().and_then(|labels| labels.get(POD_LABEL)).is_some_and(|pod| {
                    pod.strip_prefix(job.as_str()).is_some_and(|rest| rest.starts_with('-'))
                })
            } else {
                c.names.as_ref().is_some_and(|names| names.iter().any(|n| n.trim_start_matches('/') == name))
            }
        };
        self.wait_running_where(1, limit, named).await;
    }

    async fn wait_running_where(
        &self,
        count: usize,
        limit: Duration,
        select: impl Fn(&bollard::models::ContainerSummary) -> bool,
    ) -> Vec<bollard::models::ContainerSummary> {
        let started = std::time::Instant::now();
        loop {
            let running: Vec<_> = self
                .containers()
                .await
                .into_iter()
                .filter(|c| c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING) && select(c))
                .collect();
            if running.len() >= count {
                return running;
            }
            assert!(
                started.elapsed() < limit,
                "{count} worker(s) never ran within {limit:?}\n{}",
                self.daemon.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Managed containers of this rig's repository; on Kubernetes, every
    /// container the rig's fake kubelet made (running or not).
    pub async fn containers(&self) -> Vec<bollard::models::ContainerSummary> {
        let docker = docker_client(self.docker_host.as_deref()).unwrap();
        let label = match &self.kube {
            Some(kube) => format!("{SERVER_LABEL}={}", kube.id()),
            None => format!("berth.repo={}", self.repo),
        };
        let filters = std::collections::HashMap::from([("label", vec![label])]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        docker.list_containers(Some(options)).await.unwrap()
    }

    /// The fake Kubernetes of a rig started with [`Rig::start_on_kubernetes`].
    ///
    /// # Panics
    /// On a rig whose workers run on Docker.
    pub fn kube(&self) -> &FakeKube {
        self.kube.as_ref().expect("a rig started on Kubernetes")
    }

    /// What is left in this rig's fake Kubernetes: every Job, Pod and Secret
    /// of its namespace and every container its kubelet made, by kind and
    /// name (empty on a rig whose workers run on Docker).
    pub async fn kube_leftovers(&self) -> Vec<String> {
        use k8s_openapi::api::batch::v1::Job;
        use k8s_openapi::api::core::v1::{Pod, Secret};
        use kube::api::{Api, ListParams};
        let Some(kube) = &self.kube else { return Vec::new() };
        let client = kube.client();
        let namespace = kube.namespace();
        let params = ListParams::default();
        let mut left = Vec::new();
        let jobs = Api::<Job>::namespaced(client.clone(), &namespace).list(&params).await.unwrap();
        left.extend(
            jobs.items.into_iter().map(|job| format!("job {}", job.metadata.name.unwrap_or_default())),
        );
        let pods = Api::<Pod>::namespaced(client.clone(), &namespace).list(&params).await.unwrap();
        left.extend(
            pods.items.into_iter().map(|pod| format!("pod {}", pod.metadata.name.unwrap_or_default())),
        );
        let secrets = Api::<Secret>::namespaced(client, &namespace).list(&params).await.unwrap();
        left.extend(
            secrets
                .items
                .into_iter()
                .map(|secret| format!("secret {}", secret.metadata.name.unwrap_or_default())),
        );
        left.extend(
            kube.containers()
                .await
                .into_iter()
                .map(|container| format!("container {}", container.names.unwrap_or_default().join(","))),
        );
        left
    }
}
