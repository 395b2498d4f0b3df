//! A fake Kubernetes API server of our own, so the Kubernetes backend can be
//! tested end to end without a cluster: a real HTTP server on 127.0.0.1
//! speaking the Kubernetes REST shapes (JSON of `k8s-openapi` types) for one
//! namespace, plus a Job controller and a kubelet that run each Pod as a real
//! container on the local Docker Engine.
//!
//! What it serves (all under one namespace):
//! - `batch/v1` Jobs: create (409 `AlreadyExists`), get, list and watch by
//!   equality label selector and `metadata.name` field selector, merge patch
//!   (`application/merge-patch+json`; `application/strategic-merge-patch+json`
//!   is applied as a merge patch, which is the same for the scalar fields a
//!   Job may change), the `status` subresource (get, merge patch), delete
//!   with `propagationPolicy` (`Orphan`, the API's default for `batch/v1`
//!   Jobs, `Background`, `Foreground`).
//! - core/v1 Pods: get, list, watch, delete with `gracePeriodSeconds`, merge
//!   patch of `spec.activeDeadlineSeconds` (set or shortened, as on a real
//!   running Pod; the kubelet then ends the Pod with reason `DeadlineExceeded`),
//!   `pods/{name}/log` (`follow`, `tailLines`, `timestamps`); Secrets:
//!   create (`data` and `stringData`), get, list, delete. Owner references
//!   are honoured by a garbage collector, as the real one does.
//! - Watches: newline-delimited `WatchEvent` JSON (ADDED, MODIFIED, DELETED,
//!   BOOKMARK with `allowWatchBookmarks`, the initial-events bookmark with
//!   `sendInitialEvents`), resumed from any `resourceVersion` still in the
//!   history; an older one gets an `ERROR` event with a 410 `Expired` Status.
//! - Discovery (`/version`, `/api`, `/apis`, `/api/v1`, `/apis/batch/v1`),
//!   enough for `kubectl`.
//!
//! What it deliberately does not do: other resources, `PUT`, JSON patch and
//! server-side apply (415), set-based selectors (400), Indexed Jobs or
//! parallelism above one, pod failure policies, the retry back-off delay,
//! `restartPolicy: OnFailure` restarts, admission, authentication (it answers
//! anyone on loopback), TLS.
//!
//! How Pods become containers is in [`cluster`]. Every container carries the
//! label [`SERVER_LABEL`] with this server's id; [`FakeKube::shutdown`] and
//! `Drop` remove them all.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

pub mod cluster;

/// Label on every Docker container a fake server makes; its value is the
/// server's [`FakeKube::id`].
pub const SERVER_LABEL: &str = "berth-test.fake-kube";

/// Label carrying the Pod's name on its container.
pub const POD_LABEL: &str = "berth-test.fake-kube.pod";

/// How many watch events the server keeps for resumed watches; older
/// resource versions get 410 Gone.
const HISTORY: usize = 10_000;

/// How often a watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

/// One request the server received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string (empty when none).
    pub query: String,
}

impl RecordedRequest {
    /// The value of query parameter `name`, percent-decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        let pairs: Vec<(String, String)> = serde_urlencoded_pairs(&self.query);
        pairs.into_iter().find(|(key, _)| key == name).map(|(_, value)| value)
    }
}

fn serde_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(
        &format!("/?{query}").parse().expect("a path and query form a URI"),
    )
    .map(|Query(pairs)| pairs)
    .unwrap_or_default()
}

/// The kinds of object the server stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `batch/v1` Job.
    Job,
    /// core/v1 Pod.
    Pod,
    /// core/v1 Secret.
    Secret,
}

impl Kind {
    fn api_version(self) -> &'static str {
        match self {
            Kind::Job => "batch/v1",
            Kind::Pod | Kind::Secret => "v1",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Job => "Job",
            Kind::Pod => "Pod",
            Kind::Secret => "Secret",
        }
    }

    /// The group-qualified resource, as Kubernetes names it in messages.
    fn resource(self) -> &'static str {
        match self {
            Kind::Job => "jobs.batch",
            Kind::Pod => "pods",
            Kind::Secret => "secrets",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Job => "jobs",
            Kind::Pod => "pods",
            Kind::Secret => "secrets",
        }
    }

    fn group(self) -> &'static str {
        match self {
            Kind::Job => "batch",
            Kind::Pod | Kind::Secret => "",
        }
    }
}

/// A change, as watches stream it.
#[derive(Clone, Debug)]
struct Change {
    kind: Kind,
    resource_version: u64,
    change: &'static str,
    object: Arc<Value>,
}

/// Everything the server knows; the controller and kubelet share it.
pub(crate) struct Store {
    namespace: String,
    resource_version: u64,
    /// Watches from a resource version below this get 410 Gone.
    compacted: u64,
    objects: BTreeMap<(Kind, String), Value>,
    history: VecDeque<Change>,
    changes: broadcast::Sender<Change>,
    requests: Vec<RecordedRequest>,
    pub(crate) pending_forever: bool,
    /// Pods the test evicted.
    pub(crate) evicted: HashSet<String>,
    /// The container of each Pod that has one.
    pub(crate) containers: HashMap<String, String>,
    /// Terminated Pods (by uid) a Job has already counted.
    pub(crate) counted: HashSet<String>,
    sequence: u64,
}

impl Store {
    fn next_version(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    fn record(&mut self, kind: Kind, change: &'static str, object: Value) {
        let resource_version = self.resource_version;
        let change = Change { kind, resource_version, change, object: Arc::new(object) };
        if self.history.len() == HISTORY
            && let Some(oldest) = self.history.pop_front()
        {
            self.compacted = oldest.resource_version;
        }
        self.history.push_back(change.clone());
        let _ = self.changes.send(change);
    }

    /// The stored object, if any.
    pub(crate) fn raw(&self, kind: Kind, name: &str) -> Option<&Value> {
        self.objects.get(&(kind, name.to_owned()))
    }

    /// The stored object as its typed form.
    pub(crate) fn get<T: serde::de::DeserializeOwned>(&self, kind: Kind, name: &str) -> Option<T> {
        self.raw(kind, name).and_then(|value| serde_json::from_value(value.clone()).ok())
    }

    /// Every object of a kind, typed.
    pub(crate) fn all<T: serde::de::DeserializeOwned>(&self, kind: Kind) -> Vec<T> {
        self.objects
            .iter()
            .filter(|((stored, _), _)| *stored == kind)
            .filter_map(|(_, value)| serde_json::from_value(value.clone()).ok())
            .collect()
    }

    /// Stores a new object (ADDED) and returns it as stored.
    pub(crate) fn insert(&mut self, kind: Kind, mut object: Value) -> Value {
        let version = self.next_version();
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        object["apiVersion"] = json!(kind.api_version());
        object["kind"] = json!(kind.name());
        object["metadata"]["namespace"] = json!(self.namespace);
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        self.objects.insert((kind, name), object.clone());
        self.record(kind, "ADDED", object.clone());
        object
    }

    /// Replaces a stored object (MODIFIED) when it changed; returns it as stored.
    pub(crate) fn replace(&mut self, kind: Kind, mut object: Value) -> Value {
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        object["apiVersion"] = json!(kind.api_version());
        object["kind"] = json!(kind.name());
        if let Some(old) = self.objects.get(&(kind, name.clone())) {
            object["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
            if *old == object {
                return object;
            }
        }
        let version = self.next_version();
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        self.objects.insert((kind, name), object.clone());
        self.record(kind, "MODIFIED", object.clone());
        object
    }

    /// Changes a stored object through its typed form; `None` when absent.
    pub(crate) fn update<T>(&mut self, kind: Kind, name: &str, change: impl FnOnce(&mut T)) -> Option<T>
    where
        T: serde::de::DeserializeOwned + serde::Serialize,
    {
        let mut typed: T = self.get(kind, name)?;
        change(&mut typed);
        let value = serde_json::to_value(&typed).expect("k8s-openapi types serialize");
        let stored = self.replace(kind, value);
        serde_json::from_value(stored).ok()
    }

    /// Removes an object (DELETED) and returns its last state.
    pub(crate) fn remove(&mut self, kind: Kind, name: &str) -> Option<Value> {
        let mut object = self.objects.remove(&(kind, name.to_owned()))?;
        let version = self.next_version();
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        self.record(kind, "DELETED", object.clone());
        Some(object)
    }

    /// Whether any object has this uid.
    pub(crate) fn uid_exists(&self, uid: &str) -> bool {
        self.objects.values().any(|object| object["metadata"]["uid"] == uid)
    }

    /// A fresh uid.
    pub(crate) fn uid(&mut self) -> String {
        self.sequence += 1;
        let random = random_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (random >> 32) as u32,
            (random >> 16) & 0xffff,
            random & 0xfff,
            self.sequence & 0xfff,
            random_u64() & 0xffff_ffff_ffff
        )
    }

    /// The namespace this server serves.
    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }
}

/// Five characters as the API server appends to a `generateName`.
pub(crate) fn random_suffix() -> String {
    // Kubernetes' alphabet: no vowels, no look-alikes.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut random = random_u64();
    (0..5)
        .map(|_| {
            let index = usize::try_from(random % ALPHABET.len() as u64).expect("small");
            random /= ALPHABET.len() as u64;
            char::from(ALPHABET[index])
        })
        .collect()
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded per process; the counter makes each call differ.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
    );
    hasher.finish()
}

/// The current time as Kubernetes writes it.
pub(crate) fn now() -> Time {
    // The API's timestamps have second precision on the wire for most
    // fields; keeping microseconds is harmless for clients.
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// State shared by the HTTP server, the controller and the kubelet.
pub(crate) struct Shared {
    pub(crate) id: String,
    store: Mutex<Store>,
    /// Wakes the controller and kubelets after a change.
    pub(crate) changed: Notify,
    /// Ends every open watch when it changes.
    watch_epoch: tokio::sync::watch::Sender<u64>,
    pub(crate) docker: bollard::Docker,
    /// Cancels the controller and every kubelet.
    pub(crate) stop: CancellationToken,
    pub(crate) tasks: Mutex<tokio::task::JoinSet<()>>,
}

impl Shared {
    /// Locks the store; never held across `.await`.
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `task` until the server stops.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).spawn(async move {
            tokio::select! {
                () = task => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

static SERVERS: AtomicU64 = AtomicU64::new(0);

/// A running fake API server; stops and removes every container it made
/// when dropped.
pub struct FakeKube {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: tokio::sync::Mutex<Option<(CancellationToken, tokio::task::JoinHandle<()>)>>,
}

impl FakeKube {
    /// Starts a server for namespace `berth` on a free loopback port.
    ///
    /// # Panics
    /// When the Docker Engine does not answer (with one line saying so).
    pub async fn start() -> FakeKube {
        FakeKube::start_in("berth").await
    }

    /// Starts a server for `namespace` on a free loopback port.
    ///
    /// # Panics
    /// When the Docker Engine does not answer.
    pub async fn start_in(namespace: &str) -> FakeKube {
        let docker = match bollard::Docker::connect_with_unix_defaults() {
            Ok(docker) => docker.negotiate_version().await,
            Err(err) => Err(err),
        }
        .unwrap_or_else(|err| panic!("Docker Engine unreachable for the fake Kubernetes: {err}"));
        let id = format!("{}-{}", std::process::id(), SERVERS.fetch_add(1, Ordering::Relaxed));
        let (changes, _) = broadcast::channel(4096);
        let store = Store {
            namespace: namespace.to_owned(),
            resource_version: 1,
            compacted: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            changes,
            requests: Vec::new(),
            pending_forever: false,
            evicted: HashSet::new(),
            containers: HashMap::new(),
            counted: HashSet::new(),
            sequence: 0,
        };
        let shared = Arc::new(Shared {
            id,
            store: Mutex::new(store),
            changed: Notify::new(),
            watch_epoch: tokio::sync::watch::channel(0).0,
            docker,
            stop: CancellationToken::new(),
            tasks: Mutex::new(tokio::task::JoinSet::new()),
        });
        shared.spawn(cluster::control(shared.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port is free");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let fake = FakeKube { shared, addr, server: tokio::sync::Mutex::new(None) };
        fake.serve(listener).await;
        fake
    }

    async fn serve(&self, listener: tokio::net::TcpListener) {
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, router(self.shared.clone()), stop.clone()));
        *self.server.lock().await = Some((stop, task));
    }

    /// This server's id: the value of [`SERVER_LABEL`] on its containers.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The one namespace it serves.
    pub fn namespace(&self) -> String {
        self.shared.store().namespace.clone()
    }

    /// A `kube` client for this server, defaulting to its namespace.
    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.url().parse().expect("the server URL parses"));
        config.default_namespace = self.namespace();
        kube::Client::try_from(config).expect("a kube client for a plain HTTP URL builds")
    }

    /// A kubeconfig (YAML) for `kubectl` pointing at this server over HTTP.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {}\n\
             users:\n- name: fake\n  user: {{}}\ncurrent-context: fake\n",
            self.url(),
            self.namespace()
        )
    }

    /// While on, new Pods stay Pending (`PodScheduled` False, reason
    /// `Unschedulable`); turned off, they are scheduled and run.
    pub fn pending_forever(&self, on: bool) {
        self.shared.store().pending_forever = on;
        self.shared.changed.notify_waiters();
    }

    /// Evicts `pod` as a kubelet under node pressure does: its container is
    /// killed and the Pod ends Failed with reason `Evicted` and a
    /// `DisruptionTarget` condition. False when there is no such Pod.
    pub async fn evict(&self, pod: &str) -> bool {
        let container = {
            let mut store = self.shared.store();
            if store.raw(Kind::Pod, pod).is_none() {
                return false;
            }
            store.evicted.insert(pod.to_owned());
            store.containers.get(pod).cloned()
        };
        if let Some(container) = container {
            let options =
                bollard::query_parameters::KillContainerOptionsBuilder::new().signal("SIGKILL").build();
            let _ = self.shared.docker.kill_container(&container, Some(options)).await;
        }
        self.shared.changed.notify_waiters();
        true
    }

    /// Ends every open watch, and makes every resource version handed out so
    /// far too old: the next watch from one gets 410 Gone (as after an etcd
    /// compaction), so clients must list again.
    pub fn expire_watches(&self) {
        {
            let mut store = self.shared.store();
            let version = store.next_version();
            store.compacted = version;
            store.history.clear();
        }
        self.shared.watch_epoch.send_modify(|epoch| *epoch += 1);
    }

    /// Stops answering (every connection is closed and the port refuses new
    /// ones) for `down_for`, then serves again on the same address with the
    /// same state. The controller and containers keep running meanwhile.
    pub async fn restart(&self, down_for: Duration) {
        if let Some((stop, task)) = self.server.lock().await.take() {
            stop.cancel();
            let _ = task.await;
        }
        tokio::time::sleep(down_for).await;
        let listener =
            tokio::net::TcpListener::bind(self.addr).await.expect("the old address can be bound again");
        self.serve(listener).await;
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.store().requests.clone()
    }

    /// A stored object as JSON, straight from the server's state.
    pub fn object(&self, kind: Kind, name: &str) -> Option<Value> {
        self.shared.store().raw(kind, name).cloned()
    }

    /// The Docker containers this server made (running or not).
    pub async fn containers(&self) -> Vec<bollard::models::ContainerSummary> {
        let filters = HashMap::from([("label", vec![format!("{SERVER_LABEL}={}", self.shared.id)])]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        self.shared.docker.list_containers(Some(options)).await.unwrap_or_default()
    }

    /// Stops the server, the controller and the kubelet, and removes every
    /// container it made.
    pub async fn shutdown(self) {
        self.stop_tasks().await;
        remove_containers(&self.shared.docker, &self.shared.id).await;
    }

    async fn stop_tasks(&self) {
        if let Some((stop, task)) = self.server.lock().await.take() {
            stop.cancel();
            let _ = task.await;
        }
        self.shared.stop.cancel();
        let mut tasks =
            std::mem::take(&mut *self.shared.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        tasks.shutdown().await;
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        if let Ok(mut server) = self.server.try_lock()
            && let Some((stop, task)) = server.take()
        {
            stop.cancel();
            task.abort();
        }
        self.shared.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).abort_all();
        let id = self.shared.id.clone();
        // Drop cannot await; a short-lived runtime on its own thread can.
        let handle = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime builds");
            runtime.block_on(async move {
                let Ok(docker) = bollard::Docker::connect_with_unix_defaults() else { return };
                remove_containers(&docker, &id).await;
            });
        });
        let _ = handle.join();
    }
}

/// Removes every container labelled with server `id`; twice, for a create
/// that was in flight when the kubelet stopped.
async fn remove_containers(docker: &bollard::Docker, id: &str) {
    for round in 0..2 {
        if round == 1 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let filters = HashMap::from([("label", vec![format!("{SERVER_LABEL}={id}")])]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        for container in docker.list_containers(Some(options)).await.unwrap_or_default() {
            let Some(container_id) = container.id else { continue };
            let options = bollard::query_parameters::RemoveContainerOptionsBuilder::new().force(true).build();
            let _ = docker.remove_container(&container_id, Some(options)).await;
        }
    }
}

/// Accepts HTTP/1 connections until `stop`, then closes every one of them.
async fn serve(listener: tokio::net::TcpListener, router: Router, stop: CancellationToken) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let service = hyper_util::service::TowerToHyperService::new(router.clone());
                let stop = stop.clone();
                connections.spawn(async move {
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

fn router(shared: Arc<Shared>) -> Router {
    let jobs = "/apis/batch/v1/namespaces/{namespace}/jobs";
    let pods = "/api/v1/namespaces/{namespace}/pods";
    let secrets = "/api/v1/namespaces/{namespace}/secrets";
    Router::new()
        .route("/version", get(version))
        .route("/api", get(|| async { Json(json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})) }))
        .route("/apis", get(api_groups))
        .route("/api/v1", get(|| async { Json(resource_list("v1", &[Kind::Pod, Kind::Secret])) }))
        .route("/apis/batch/v1", get(|| async { Json(resource_list("batch/v1", &[Kind::Job])) }))
        .route(jobs, get(list_or_watch::<JobKind>).post(create::<JobKind>))
        .route(
            &format!("{jobs}/{{name}}"),
            get(read::<JobKind>).patch(patch::<JobKind>).delete(delete::<JobKind>),
        )
        .route(&format!("{jobs}/{{name}}/status"), get(read::<JobKind>).patch(patch_status::<JobKind>))
        .route("/apis/batch/v1/jobs", get(list_all::<JobKind>))
        .route(pods, get(list_or_watch::<PodKind>))
        .route(
            &format!("{pods}/{{name}}"),
            get(read::<PodKind>).patch(patch_pod).delete(delete::<PodKind>),
        )
        .route(&format!("{pods}/{{name}}/status"), get(read::<PodKind>))
        .route(&format!("{pods}/{{name}}/log"), get(cluster::logs))
        .route("/api/v1/pods", get(list_all::<PodKind>))
        .route(secrets, get(list_or_watch::<SecretKind>).post(create::<SecretKind>))
        .route(&format!("{secrets}/{{name}}"), get(read::<SecretKind>).delete(delete::<SecretKind>))
        .fallback(|method: Method, uri: axum::http::Uri| async move {
            KubeError::new(StatusCode::NOT_FOUND, "NotFound", format!("the server could not find the requested resource ({method} {})", uri.path()))
        })
        .layer(axum::middleware::from_fn_with_state(shared.clone(), record))
        .with_state(shared)
}

async fn record(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let recorded = RecordedRequest {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        query: request.uri().query().unwrap_or_default().to_owned(),
    };
    shared.store().requests.push(recorded);
    next.run(request).await
}

async fn version() -> Json<Value> {
    Json(json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "gitCommit": "fake",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
        "compiler": "gc", "platform": "linux/amd64"
    }))
}

async fn api_groups() -> Json<Value> {
    Json(json!({
        "kind": "APIGroupList", "apiVersion": "v1",
        "groups": [{
            "name": "batch",
            "versions": [{"groupVersion": "batch/v1", "version": "v1"}],
            "preferredVersion": {"groupVersion": "batch/v1", "version": "v1"}
        }]
    }))
}

fn resource_list(group_version: &str, kinds: &[Kind]) -> Value {
    let mut resources = Vec::new();
    for kind in kinds {
        let verbs = match kind {
            Kind::Pod => json!(["delete", "get", "list", "patch", "watch"]),
            Kind::Job => json!(["create", "delete", "get", "list", "patch", "watch"]),
            Kind::Secret => json!(["create", "delete", "get", "list", "watch"]),
        };
        resources.push(json!({"name": kind.plural(), "singularName": kind.name().to_lowercase(), "namespaced": true, "kind": kind.name(), "verbs": verbs}));
        resources.push(json!({"name": format!("{}/status", kind.plural()), "singularName": "", "namespaced": true, "kind": kind.name(), "verbs": ["get"]}));
    }
    resources.push(
        json!({"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}),
    );
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

/// A Kubernetes `Status` failure answer.
#[derive(Debug)]
pub(crate) struct KubeError {
    code: StatusCode,
    reason: &'static str,
    message: String,
    details: Value,
}

impl KubeError {
    pub(crate) fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> KubeError {
        KubeError { code, reason, message: message.into(), details: Value::Null }
    }

    pub(crate) fn not_found(kind: Kind, name: &str) -> KubeError {
        KubeError {
            details: json!({"name": name, "group": kind.group(), "kind": kind.plural()}),
            ..KubeError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} \"{name}\" not found", kind.resource()),
            )
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> KubeError {
        KubeError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    fn invalid(kind: Kind, name: &str, message: &str) -> KubeError {
        KubeError {
            details: json!({"name": name, "group": kind.group(), "kind": kind.name()}),
            ..KubeError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("{} \"{name}\" is invalid: {message}", kind.name()),
            )
        }
    }

    fn body(&self) -> Value {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code.as_u16()
        });
        if !self.details.is_null() {
            status["details"] = self.details.clone();
        }
        status
    }
}

impl IntoResponse for KubeError {
    fn into_response(self) -> Response {
        (self.code, Json(self.body())).into_response()
    }
}

/// What differs between the kinds the generic handlers serve.
trait Resource {
    const KIND: Kind;
    /// Checks and completes a new object as the API server's defaulting and
    /// validation do.
    fn admit(store: &mut Store, object: &mut Value) -> Result<(), KubeError>;
}

struct JobKind;
struct PodKind;
struct SecretKind;

impl Resource for JobKind {
    const KIND: Kind = Kind::Job;

    fn admit(store: &mut Store, object: &mut Value) -> Result<(), KubeError> {
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let job: Job = serde_json::from_value(object.clone()).map_err(|err| {
            KubeError::bad_request(format!("Job in version \"v1\" cannot be handled as a Job: {err}"))
        })?;
        let spec =
            job.spec.as_ref().ok_or_else(|| KubeError::invalid(Kind::Job, &name, "spec: Required value"))?;
        let pod_spec = spec
            .template
            .spec
            .as_ref()
            .ok_or_else(|| KubeError::invalid(Kind::Job, &name, "spec.template.spec: Required value"))?;
        if !matches!(pod_spec.restart_policy.as_deref(), Some("Never" | "OnFailure")) {
            return Err(KubeError::invalid(
                Kind::Job,
                &name,
                "spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\"",
            ));
        }
        if pod_spec.containers.is_empty() {
            return Err(KubeError::invalid(
                Kind::Job,
                &name,
                "spec.template.spec.containers: Required value",
            ));
        }
        if let Some(container) =
            pod_spec.containers.iter().find(|c| c.image.as_deref().unwrap_or("").is_empty())
        {
            return Err(KubeError::invalid(
                Kind::Job,
                &name,
                &format!("spec.template.spec.containers[{}].image: Required value", container.name),
            ));
        }
        if name.len() > 63 {
            return Err(KubeError::invalid(
                Kind::Job,
                &name,
                "metadata.name: must be no more than 63 characters",
            ));
        }
        let uid = object["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
        // Defaults and the selector the API server adds to every Job.
        let spec = &mut object["spec"];
        for (field, default) in
            [("completions", json!(1)), ("parallelism", json!(1)), ("backoffLimit", json!(6))]
        {
            if spec[field].is_null() {
                spec[field] = default;
            }
        }
        if spec["suspend"].is_null() {
            spec["suspend"] = json!(false);
        }
        spec["completionMode"] = json!("NonIndexed");
        spec["podReplacementPolicy"] = json!("TerminatingOrFailed");
        spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
        let labels = &mut spec["template"]["metadata"]["labels"];
        if !labels.is_object() {
            *labels = json!({});
        }
        for key in ["batch.kubernetes.io/controller-uid", "controller-uid"] {
            labels[key] = json!(uid);
        }
        for key in ["batch.kubernetes.io/job-name", "job-name"] {
            labels[key] = json!(name);
        }
        let pod_spec = &mut spec["template"]["spec"];
        if pod_spec["terminationGracePeriodSeconds"].is_null() {
            pod_spec["terminationGracePeriodSeconds"] = json!(30);
        }
        let job_labels = &mut object["metadata"]["labels"];
        if !job_labels.is_object() {
            *job_labels = json!({});
        }
        for key in ["batch.kubernetes.io/controller-uid", "controller-uid"] {
            job_labels[key] = json!(uid);
        }
        for key in ["batch.kubernetes.io/job-name", "job-name"] {
            job_labels[key] = json!(name);
        }
        object["status"] = json!({});
        let _ = store;
        Ok(())
    }
}

impl Resource for PodKind {
    const KIND: Kind = Kind::Pod;

    fn admit(_store: &mut Store, _object: &mut Value) -> Result<(), KubeError> {
        Err(KubeError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the fake creates Pods only from Jobs",
        ))
    }
}

impl Resource for SecretKind {
    const KIND: Kind = Kind::Secret;

    fn admit(_store: &mut Store, object: &mut Value) -> Result<(), KubeError> {
        let secret: Secret = serde_json::from_value(object.clone()).map_err(|err| {
            KubeError::bad_request(format!("Secret in version \"v1\" cannot be handled as a Secret: {err}"))
        })?;
        let mut data = secret.data.unwrap_or_default();
        for (key, value) in secret.string_data.unwrap_or_default() {
            data.insert(key, k8s_openapi::ByteString(value.into_bytes()));
        }
        object["data"] = serde_json::to_value(&data).expect("secret data serializes");
        if let Some(map) = object.as_object_mut() {
            map.remove("stringData");
        }
        if object["type"].is_null() {
            object["type"] = json!("Opaque");
        }
        Ok(())
    }
}

fn check_namespace(store: &Store, namespace: &str) -> Result<(), KubeError> {
    if store.namespace == namespace {
        Ok(())
    } else {
        Err(KubeError {
            details: json!({"name": namespace, "kind": "namespaces"}),
            ..KubeError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("namespaces \"{namespace}\" not found"),
            )
        })
    }
}

async fn create<R: Resource>(
    State(shared): State<Arc<Shared>>,
    Path(namespace): Path<String>,
    body: Bytes,
) -> Result<Response, KubeError> {
    let mut object: Value = serde_json::from_slice(&body)
        .map_err(|err| KubeError::bad_request(format!("the request body is not JSON: {err}")))?;
    let created = {
        let mut store = shared.store();
        check_namespace(&store, &namespace)?;
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        let metadata = &mut object["metadata"];
        if metadata["name"].as_str().unwrap_or_default().is_empty() {
            let Some(prefix) = metadata["generateName"].as_str().filter(|prefix| !prefix.is_empty()) else {
                return Err(KubeError::invalid(
                    R::KIND,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            };
            metadata["name"] = json!(format!("{prefix}{}", random_suffix()));
        }
        let name = metadata["name"].as_str().unwrap_or_default().to_owned();
        if !valid_name(&name) {
            return Err(KubeError::invalid(
                R::KIND,
                &name,
                &format!(
                    "metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
                ),
            ));
        }
        if store.raw(R::KIND, &name).is_some() {
            return Err(KubeError {
                details: json!({"name": name, "group": R::KIND.group(), "kind": R::KIND.plural()}),
                ..KubeError::new(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("{} \"{name}\" already exists", R::KIND.resource()),
                )
            });
        }
        let uid = store.uid();
        let metadata = &mut object["metadata"];
        metadata["uid"] = json!(uid);
        metadata["creationTimestamp"] = serde_json::to_value(now()).expect("a time serializes");
        metadata["generation"] = json!(1);
        for field in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"] {
            if let Some(map) = metadata.as_object_mut() {
                map.remove(field);
            }
        }
        R::admit(&mut store, &mut object)?;
        store.insert(R::KIND, object)
    };
    shared.changed.notify_waiters();
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

async fn read<R: Resource>(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Value>, KubeError> {
    let store = shared.store();
    check_namespace(&store, &namespace)?;
    store.raw(R::KIND, &name).cloned().map(Json).ok_or_else(|| KubeError::not_found(R::KIND, &name))
}

/// A parsed `labelSelector` / `fieldSelector`.
#[derive(Debug, Default)]
struct Selector {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

#[derive(Debug)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

impl Requirement {
    fn parse(term: &str) -> Result<Requirement, KubeError> {
        let term = term.trim();
        if term.contains('(') || term.contains(" in ") || term.contains(" notin ") {
            return Err(KubeError::bad_request(format!(
                "set-based selector {term:?} is not supported by the fake"
            )));
        }
        if let Some((key, value)) = term.split_once("!=") {
            return Ok(Requirement::NotEquals(key.trim().to_owned(), value.trim().to_owned()));
        }
        if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            return Ok(Requirement::Equals(key.trim().to_owned(), value.trim().to_owned()));
        }
        if let Some(key) = term.strip_prefix('!') {
            return Ok(Requirement::Absent(key.trim().to_owned()));
        }
        Ok(Requirement::Exists(term.to_owned()))
    }

    fn matches(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        match self {
            Requirement::Equals(key, value) => lookup(key).as_deref() == Some(value),
            Requirement::NotEquals(key, value) => lookup(key).as_deref() != Some(value),
            Requirement::Exists(key) => lookup(key).is_some(),
            Requirement::Absent(key) => lookup(key).is_none(),
        }
    }
}

impl Selector {
    fn parse(query: &HashMap<String, String>, kind: Kind) -> Result<Selector, KubeError> {
        let terms = |name: &str| -> Result<Vec<Requirement>, KubeError> {
            query
                .get(name)
                .map(|text| {
                    text.split(',').filter(|term| !term.trim().is_empty()).map(Requirement::parse).collect()
                })
                .unwrap_or(Ok(Vec::new()))
        };
        let selector = Selector { labels: terms("labelSelector")?, fields: terms("fieldSelector")? };
        for field in &selector.fields {
            let key = match field {
                Requirement::Equals(key, _) | Requirement::NotEquals(key, _) => key,
                Requirement::Exists(key) | Requirement::Absent(key) => {
                    return Err(KubeError::bad_request(format!("invalid field selector {key:?}")));
                }
            };
            let supported = matches!(key.as_str(), "metadata.name" | "metadata.namespace")
                || (kind == Kind::Pod && key == "status.phase");
            if !supported {
                return Err(KubeError::bad_request(format!("field label not supported: {key}")));
            }
        }
        Ok(selector)
    }

    fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.labels.iter().all(|requirement| {
            requirement.matches(|key| labels.get(key).and_then(Value::as_str).map(str::to_owned))
        }) && self.fields.iter().all(|requirement| {
            requirement.matches(|key| {
                let value = match key {
                    "metadata.name" => &object["metadata"]["name"],
                    "metadata.namespace" => &object["metadata"]["namespace"],
                    "status.phase" => &object["status"]["phase"],
                    _ => &Value::Null,
                };
                Some(value.as_str().unwrap_or_default().to_owned())
            })
        })
    }
}

async fn list_all<R: Resource>(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, KubeError> {
    let namespace = shared.store().namespace.clone();
    list_or_watch::<R>(State(shared), Path(namespace), Query(query)).await
}

async fn list_or_watch<R: Resource>(
    State(shared): State<Arc<Shared>>,
    Path(namespace): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, KubeError> {
    let selector = Selector::parse(&query, R::KIND)?;
    if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
        return watch(shared, R::KIND, &namespace, selector, &query);
    }
    let store = shared.store();
    check_namespace(&store, &namespace)?;
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((kind, _), object)| *kind == R::KIND && selector.matches(object))
        .map(|(_, object)| object.clone())
        .collect();
    let list = json!({
        "kind": format!("{}List", R::KIND.name()),
        "apiVersion": R::KIND.api_version(),
        "metadata": {"resourceVersion": store.resource_version.to_string()},
        "items": items,
    });
    Ok(Json(list).into_response())
}

fn watch_line(change: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": change, "object": object})).expect("JSON serializes");
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark(kind: Kind, resource_version: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": resource_version.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    watch_line(
        "BOOKMARK",
        &json!({"kind": kind.name(), "apiVersion": kind.api_version(), "metadata": metadata}),
    )
}

fn watch(
    shared: Arc<Shared>,
    kind: Kind,
    namespace: &str,
    selector: Selector,
    query: &HashMap<String, String>,
) -> Result<Response, KubeError> {
    let since = match query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(text) => Some(
            text.parse::<u64>()
                .map_err(|_| KubeError::bad_request(format!("invalid resource version {text:?}")))?,
        ),
    };
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|value| value == "true");
    let send_initial = query.get("sendInitialEvents").is_some_and(|value| value == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|value| value.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let mut epoch = shared.watch_epoch.subscribe();
    let (initial, mut changes, mut last_version) = {
        let store = shared.store();
        check_namespace(&store, namespace)?;
        let mut initial = Vec::new();
        match since {
            Some(version) if version < store.compacted => {
                let gone = KubeError::new(
                    StatusCode::GONE,
                    "Expired",
                    format!("too old resource version: {version} ({})", store.compacted),
                );
                initial.push(watch_line("ERROR", &gone.body()));
                let body = futures_util::stream::iter(initial.into_iter().map(Ok::<_, Infallible>));
                return Ok(watch_response(Body::from_stream(body)));
            }
            Some(version) => {
                for change in store.history.iter().filter(|c| c.resource_version > version && c.kind == kind)
                {
                    if selector.matches(&change.object) {
                        initial.push(watch_line(change.change, &change.object));
                    }
                }
            }
            None => {
                // No version: the current state as ADDED events first.
                for ((stored, _), object) in &store.objects {
                    if *stored == kind && selector.matches(object) {
                        initial.push(watch_line("ADDED", object));
                    }
                }
                if send_initial {
                    initial.push(bookmark(kind, store.resource_version, true));
                }
            }
        }
        (initial, store.changes.subscribe(), store.resource_version)
    };
    let stop = shared.stop.clone();
    shared.spawn(async move {
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        epoch.mark_unchanged();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticks = tokio::time::interval(BOOKMARK_EVERY);
        ticks.tick().await;
        loop {
            let line = tokio::select! {
                () = &mut deadline => return,
                () = stop.cancelled() => return,
                () = tx.closed() => return,
                _ = epoch.changed() => return,
                _ = ticks.tick(), if bookmarks => bookmark(kind, last_version, false),
                received = changes.recv() => match received {
                    Ok(change) => {
                        last_version = change.resource_version;
                        if change.kind != kind || !selector.matches(&change.object) {
                            continue;
                        }
                        watch_line(change.change, &change.object)
                    }
                    // Fallen behind: end the watch; the client resumes from its last version.
                    Err(_) => return,
                },
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    let body =
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|line| line.map(Ok::<_, Infallible>)));
    Ok(watch_response(Body::from_stream(body)))
}

fn watch_response(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::TRANSFER_ENCODING, "chunked")
        .body(body)
        .expect("a watch response builds")
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let map = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn patch_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, KubeError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let content_type = content_type.split(';').next().unwrap_or_default().trim();
    if !matches!(content_type, "application/merge-patch+json" | "application/strategic-merge-patch+json") {
        return Err(KubeError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the fake accepts merge patches only, not {content_type:?}"),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|err| KubeError::bad_request(format!("the patch is not JSON: {err}")))
}

async fn patch<R: Resource>(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, KubeError> {
    let patch = patch_body(&headers, &body)?;
    let patched = {
        let mut store = shared.store();
        check_namespace(&store, &namespace)?;
        let old = store.raw(R::KIND, &name).cloned().ok_or_else(|| KubeError::not_found(R::KIND, &name))?;
        let mut object = old.clone();
        merge_patch(&mut object, &patch);
        // The main resource ignores status, and identity is not the client's to change.
        object["status"] = old["status"].clone();
        for field in ["name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "generation"] {
            object["metadata"][field] = old["metadata"][field].clone();
        }
        for field in ["template", "selector", "completions", "completionMode"] {
            if object["spec"][field] != old["spec"][field] {
                return Err(KubeError::invalid(
                    R::KIND,
                    &name,
                    &format!("spec.{field}: Invalid value: field is immutable"),
                ));
            }
        }
        serde_json::from_value::<Job>(object.clone())
            .map_err(|err| KubeError::bad_request(format!("the patched object is not a Job: {err}")))?;
        if object["spec"] != old["spec"] {
            object["metadata"]["generation"] = json!(old["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
        }
        store.replace(R::KIND, object)
    };
    shared.changed.notify_waiters();
    Ok(Json(patched))
}

/// A merge patch of a Pod, which may change only what a running Pod's spec
/// lets change and the fake models: `spec.activeDeadlineSeconds`, set or
/// shortened (the kubelet then ends the Pod once it has run that long).
async fn patch_pod(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, KubeError> {
    let patch = patch_body(&headers, &body)?;
    let patched = {
        let mut store = shared.store();
        check_namespace(&store, &namespace)?;
        let old =
            store.raw(Kind::Pod, &name).cloned().ok_or_else(|| KubeError::not_found(Kind::Pod, &name))?;
        let mut object = old.clone();
        merge_patch(&mut object, &patch);
        object["status"] = old["status"].clone();
        object["metadata"] = old["metadata"].clone();
        let deadline = "activeDeadlineSeconds";
        let mut rest = object["spec"].clone();
        let mut old_rest = old["spec"].clone();
        for spec in [&mut rest, &mut old_rest] {
            if let Some(map) = spec.as_object_mut() {
                map.remove(deadline);
            }
        }
        if rest != old_rest {
            return Err(KubeError::invalid(
                Kind::Pod,
                &name,
                "spec: Forbidden: pod updates may not change fields other than `spec.activeDeadlineSeconds` (the fake's subset)",
            ));
        }
        match (old["spec"][deadline].as_i64(), object["spec"][deadline].as_i64()) {
            (_, Some(new)) if new < 1 => {
                return Err(KubeError::invalid(
                    Kind::Pod,
                    &name,
                    "spec.activeDeadlineSeconds: Invalid value: must be greater than or equal to 1",
                ));
            }
            (Some(old), Some(new)) if new > old => {
                return Err(KubeError::invalid(
                    Kind::Pod,
                    &name,
                    "spec.activeDeadlineSeconds: Invalid value: must be less than or equal to the previous value",
                ));
            }
            (Some(_), None) => {
                return Err(KubeError::invalid(
                    Kind::Pod,
                    &name,
                    "spec.activeDeadlineSeconds: Invalid value: must not be removed once set",
                ));
            }
            _ => {}
        }
        serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(object.clone())
            .map_err(|err| KubeError::bad_request(format!("the patched object is not a Pod: {err}")))?;
        store.replace(Kind::Pod, object)
    };
    shared.changed.notify_waiters();
    Ok(Json(patched))
}

async fn patch_status<R: Resource>(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, KubeError> {
    let patch = patch_body(&headers, &body)?;
    let patched = {
        let mut store = shared.store();
        check_namespace(&store, &namespace)?;
        let mut object =
            store.raw(R::KIND, &name).cloned().ok_or_else(|| KubeError::not_found(R::KIND, &name))?;
        merge_patch(&mut object["status"], &patch["status"]);
        store.replace(R::KIND, object)
    };
    shared.changed.notify_waiters();
    Ok(Json(patched))
}

/// `DeleteOptions`, from the query or the body (clients send either).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteOptions {
    grace_period_seconds: Option<i64>,
    propagation_policy: Option<String>,
}

async fn delete<R: Resource>(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Json<Value>, KubeError> {
    let mut options: DeleteOptions = if body.is_empty() {
        DeleteOptions::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|err| KubeError::bad_request(format!("bad DeleteOptions: {err}")))?
    };
    if let Some(grace) = query.get("gracePeriodSeconds") {
        options.grace_period_seconds = grace.parse().ok();
    }
    if let Some(policy) = query.get("propagationPolicy") {
        options.propagation_policy = Some(policy.clone());
    }
    let policy = match options.propagation_policy.as_deref() {
        None => cluster::Propagation::default_for(R::KIND),
        Some("Orphan") => cluster::Propagation::Orphan,
        Some("Background") => cluster::Propagation::Background,
        Some("Foreground") => cluster::Propagation::Foreground,
        Some(other) => {
            return Err(KubeError::bad_request(format!(
                "propagationPolicy {other:?} is not one of Orphan, Background, Foreground"
            )));
        }
    };
    {
        let store = shared.store();
        check_namespace(&store, &namespace)?;
    }
    let answer = cluster::delete(&shared, R::KIND, &name, policy, options.grace_period_seconds)
        .await
        .ok_or_else(|| KubeError::not_found(R::KIND, &name))?;
    shared.changed.notify_waiters();
    Ok(Json(answer))
}
