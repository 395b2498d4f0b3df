//! Berth's workers as Kubernetes Jobs: [`KubernetesEngine`] implements the
//! dispatcher's [`ContainerEngine`](dispatcher::ContainerEngine) seam with one
//! Job per task in one namespace, over kube-rs.
//!
//! The mapping, in short:
//! - a container is a Job of the same name (its [`ContainerId`](dispatcher::ContainerId)
//!   is the Job's name), created **suspended** so that create and start stay
//!   two steps (a queued worker is created, not started); start unsuspends;
//! - the worker's environment, tokens included, is a Secret of the same name
//!   owned by the Job and read with `envFrom`: no secret is ever in the Job;
//! - `berth.managed`, `berth.schema`, `berth.instance` and `berth.task-id`
//!   are Kubernetes labels (selectors need them), every other `berth.*` key an
//!   annotation; reading back merges both into one map;
//! - the pod gets the hardened profile as a pod can have it: non-root,
//!   no privilege escalation, every capability dropped, `RuntimeDefault`
//!   seccomp, a read-only root with memory-backed scratch, limits equal to
//!   requests, no service account token, no service links;
//! - exit code, OOM flag and times come from the pod's container status;
//!   [`EXIT_COULD_NOT_START`], [`EXIT_STOPPED_FROM_OUTSIDE`] and
//!   [`EXIT_KILLED`] stand in when the pod could not say.
//!
//! What this crate does not do: choose itself (the daemon wires an engine
//! explicitly), create the namespace, its Role or its NetworkPolicies (the
//! deployment's manifests), pull or inspect images, or enforce what a pod
//! cannot be given (see [`KubernetesEngine::CAPABILITIES`]).

mod access;
mod engine;
mod spec;
mod status;

pub use access::{NEEDED, POD_SECURITY_LABEL};
pub use engine::{ImagePull, KubernetesEngine, KubernetesOptions};
pub use status::{EXIT_COULD_NOT_START, EXIT_KILLED, EXIT_STOPPED_FROM_OUTSIDE};

#[cfg(test)]
mod tests;
