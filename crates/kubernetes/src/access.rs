//! What `berth doctor` asks of a cluster: whether the daemon's account may
//! do what the backend does in its namespace (a SelfSubjectAccessReview per
//! verb), and the namespace's Pod Security level.

use dispatcher::{DispatchError, EngineError};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;

use crate::KubernetesEngine;

/// Every (API group, resource, verb) the backend uses in its namespace; the
/// Role in `deploy/kubernetes/rbac.yaml` grants exactly these.
pub const NEEDED: &[(&str, &str, &str)] = &[
    ("batch", "jobs", "get"),
    ("batch", "jobs", "list"),
    ("batch", "jobs", "watch"),
    ("batch", "jobs", "create"),
    ("batch", "jobs", "patch"),
    ("batch", "jobs", "delete"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "pods", "patch"),
    ("", "pods", "delete"),
    ("", "pods/log", "get"),
    ("", "secrets", "get"),
    ("", "secrets", "create"),
    ("", "secrets", "delete"),
];

/// The label that holds a namespace's enforced Pod Security level.
pub const POD_SECURITY_LABEL: &str = "pod-security.kubernetes.io/enforce";

fn api_error(what: &str, err: kube::Error) -> DispatchError {
    DispatchError::EngineCall {
        operation: "ask the cluster",
        container: what.to_owned(),
        source: EngineError::other(err.to_string(), false),
    }
}

impl KubernetesEngine {
    /// The permissions of [`NEEDED`] the daemon's account lacks in the
    /// namespace, as `verb group/resource`; empty when it has them all.
    ///
    /// # Errors
    /// When the API server does not answer a review.
    pub async fn missing_permissions(&self) -> Result<Vec<String>, DispatchError> {
        let reviews: Api<SelfSubjectAccessReview> = Api::all(self.client().clone());
        let mut missing = Vec::new();
        for (group, resource, verb) in NEEDED {
            let (resource, subresource) = match resource.split_once('/') {
                Some((resource, subresource)) => (resource, Some(subresource.to_owned())),
                None => (*resource, None),
            };
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        group: Some((*group).to_owned()),
                        namespace: Some(self.namespace().to_owned()),
                        resource: Some(resource.to_owned()),
                        subresource: subresource.clone(),
                        verb: Some((*verb).to_owned()),
                        ..ResourceAttributes::default()
                    }),
                    ..SelfSubjectAccessReviewSpec::default()
                },
                ..SelfSubjectAccessReview::default()
            };
            let answer = reviews
                .create(&PostParams::default(), &review)
                .await
                .map_err(|err| api_error("a SelfSubjectAccessReview", err))?;
            if !answer.status.is_some_and(|status| status.allowed) {
                let group = if group.is_empty() { "core".to_owned() } else { (*group).to_owned() };
                let resource = match &subresource {
                    Some(subresource) => format!("{resource}/{subresource}"),
                    None => resource.to_owned(),
                };
                missing.push(format!("{verb} {group}/{resource}"));
            }
        }
        Ok(missing)
    }

    /// The namespace's enforced Pod Security level (`restricted`,
    /// `baseline`, `privileged`), or `None` when it sets none.
    ///
    /// # Errors
    /// When the namespace cannot be read (missing, or not allowed).
    pub async fn pod_security_level(&self) -> Result<Option<String>, DispatchError> {
        let namespaces: Api<Namespace> = Api::all(self.client().clone());
        let namespace =
            namespaces.get(self.namespace()).await.map_err(|err| api_error("the namespace", err))?;
        Ok(namespace.metadata.labels.and_then(|labels| labels.get(POD_SECURITY_LABEL).cloned()))
    }
}
