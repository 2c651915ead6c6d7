//! Who is calling the certificate service. Pluggable by credential:
//! * a bootstrap token of this control plane (`<claims>.<mac>`, `switchyard token create`);
//! * a Kubernetes service-account JWT (`<header>.<payload>.<signature>`), checked with a
//!   TokenReview against the Kubernetes API with audience `switchyard-ca` (when
//!   `kube_api` is configured); the pod's node comes from the token's
//!   `authentication.kubernetes.io/node-name` extra (Kubernetes ≥ 1.30 bound tokens);
//! * on the TLS port, a still-valid client certificate from the bundle (renewal).

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use switchyard_ca::token::{AUDIENCE, TokenAuthority};
use tonic::Status;
use tracing::debug;

/// The node a bound service-account token was issued for.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Namespace.
    pub ns: String,
    /// Service account.
    pub sa: String,
    /// Node, when the credential names one.
    pub node: Option<String>,
    /// How it was authenticated (for the audit log).
    pub via: &'static str,
}

/// Checks bearer tokens.
#[derive(Clone)]
pub struct Authenticator {
    tokens: std::sync::Arc<TokenAuthority>,
    kube: Option<kube::Client>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("token_review", &self.kube.is_some())
            .finish()
    }
}

impl Authenticator {
    /// Bootstrap tokens of `tokens`; Kubernetes tokens through `kube` when given.
    pub fn new(tokens: std::sync::Arc<TokenAuthority>, kube: Option<kube::Client>) -> Self {
        Authenticator { tokens, kube }
    }

    /// Authenticates a bearer token.
    pub async fn bearer(&self, token: &str) -> Result<Caller, Status> {
        if token.split('.').count() == 3 {
            return self.token_review(token).await;
        }
        let claims = self
            .tokens
            .verify(token)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        Ok(Caller {
            ns: claims.ns,
            sa: claims.sa,
            node: claims.node,
            via: "bootstrap token",
        })
    }

    async fn token_review(&self, token: &str) -> Result<Caller, Status> {
        let Some(client) = &self.kube else {
            return Err(Status::unauthenticated(
                "a Kubernetes service-account token, but this control plane has no Kubernetes API configured (config key kube_api)",
            ));
        };
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(client.clone());
        let done = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                debug!(error = %e, "token review failed");
                Status::unavailable(format!(
                    "cannot check the token with the Kubernetes API: {e}"
                ))
            })?;
        let status = done.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(Status::unauthenticated(format!(
                "the Kubernetes API did not authenticate the token: {}",
                status.error.unwrap_or_else(|| "no reason given".into())
            )));
        }
        if let Some(auds) = &status.audiences
            && !auds.iter().any(|a| a == AUDIENCE)
        {
            return Err(Status::unauthenticated(format!(
                "token audiences {auds:?} do not include {AUDIENCE:?}"
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let (ns, sa) = service_account(&username).ok_or_else(|| {
            Status::unauthenticated(format!(
                "token belongs to {username:?}, not a service account"
            ))
        })?;
        Ok(Caller {
            ns,
            sa,
            node: node_of(&user.extra.unwrap_or_default()),
            via: "kubernetes token",
        })
    }
}

/// `system:serviceaccount:<ns>:<sa>` -> (ns, sa).
pub fn service_account(username: &str) -> Option<(String, String)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, sa) = rest.split_once(':')?;
    (!ns.is_empty() && !sa.is_empty() && !sa.contains(':')).then(|| (ns.into(), sa.into()))
}

fn node_of(extra: &BTreeMap<String, Vec<String>>) -> Option<String> {
    extra
        .get(NODE_NAME_EXTRA)
        .and_then(|v| v.first())
        .filter(|n| !n.is_empty())
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_usernames() {
        assert_eq!(
            service_account("system:serviceaccount:default:web"),
            Some(("default".into(), "web".into()))
        );
        assert_eq!(service_account("system:node:n1"), None);
        assert_eq!(service_account("system:serviceaccount:default:"), None);
        assert_eq!(service_account("system:serviceaccount:a:b:c"), None);
    }
}
