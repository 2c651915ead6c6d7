//! Switchyard's own custom resources, `switchyard.io/v1alpha1` `AuthorizationPolicy` and
//! `PeerAuthentication`: their Rust types (from which the CRD manifests are generated, see
//! [`crd_yaml`]) and their conversion into model inputs.
//!
//! Spec types reject unknown fields so that a misspelt field is an error instead of a policy
//! that silently allows more than intended.

use std::collections::BTreeMap;

use kube::CustomResource;
use kube::core::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchyard_model::input::{AuthorizationPolicyInput, PeerAuthenticationInput};
use switchyard_model::{
    IpBlock, MtlsMode, ObjectKey, PolicyAction, PolicyOperation, PolicyRule, PolicySource,
};

use super::k8s::{FieldError, FieldPath, port_number};

#[cfg(test)]
mod tests;

/// The CRDs' API group.
pub const GROUP: &str = "switchyard.io";
/// The CRDs' version.
pub const VERSION: &str = "v1alpha1";

/// Which workloads of the policy's namespace a resource applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Pod labels that must all match; empty selects every workload of the namespace.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// The spec of an `AuthorizationPolicy`: L4 allow/deny rules for inbound connections.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "switchyard.io",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    namespaced,
    derive = "PartialEq",
    shortname = "authz",
    doc = "Allows or denies inbound connections to the selected workloads."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Workloads the policy applies to; none: every workload of the namespace (of the mesh
    /// in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// `ALLOW` (default) or `DENY`.
    #[serde(default)]
    pub action: AuthorizationAction,
    /// Rules; a connection matches when any rule matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthorizationRule>,
}

/// What an `AuthorizationPolicy` does with matching connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorizationAction {
    /// Allow them (and deny others once any ALLOW policy applies).
    #[default]
    Allow,
    /// Deny them.
    Deny,
}

/// One rule: matches when any `from` and any `to` entry match (an empty list matches all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationRule {
    /// Sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    /// Destinations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
}

/// A `from` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    /// Conditions on the peer.
    #[serde(default)]
    pub source: SourceSpec,
}

/// Conditions on the source of a connection; each list matches when any element matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    /// Peer SPIFFE IDs (`*` allowed as a prefix or suffix).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Excluded peer SPIFFE IDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// Peer namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Excluded peer namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Source address blocks: CIDRs (`10.0.0.0/16`) or single addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    /// Excluded source address blocks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
}

/// A `to` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    /// Conditions on the destination.
    #[serde(default)]
    pub operation: OperationSpec,
}

/// Conditions on the destination of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperationSpec {
    /// Destination (target) ports, 1-65535.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(min = 1, max = 65535)))]
    pub ports: Vec<u32>,
    /// Excluded destination ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(min = 1, max = 65535)))]
    pub not_ports: Vec<u32>,
    /// Request paths (HTTP ports of sidecar and Envoy workloads): exact, `prefix*`,
    /// `*suffix` or `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Excluded request paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
    /// Request methods (`GET`, `POST`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Excluded request methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
}

/// The spec of a `PeerAuthentication`: whether inbound traffic must be mutual TLS.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "switchyard.io",
    version = "v1alpha1",
    kind = "PeerAuthentication",
    namespaced,
    derive = "PartialEq",
    shortname = "peerauthn",
    doc = "Sets whether inbound traffic to the selected workloads must be mutual TLS."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Workloads it applies to; none: every workload of the namespace (of the mesh in the
    /// root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Mode for every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsSettings>,
    /// Modes for single target ports, keyed by port number.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<String, PortMtlsSettings>,
}

/// Workload-wide mTLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MtlsSettings {
    /// The mode; unset inherits from the namespace or mesh policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsModeSpec>,
}

/// Per-port mTLS settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortMtlsSettings {
    /// The mode for this port.
    pub mode: MtlsModeSpec,
}

/// Whether inbound traffic must be mutual TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsModeSpec {
    /// mTLS only.
    Strict,
    /// mTLS or plaintext.
    Permissive,
    /// Plaintext only.
    Disable,
}

impl From<MtlsModeSpec> for MtlsMode {
    fn from(m: MtlsModeSpec) -> Self {
        match m {
            MtlsModeSpec::Strict => MtlsMode::Strict,
            MtlsModeSpec::Permissive => MtlsMode::Permissive,
            MtlsModeSpec::Disable => MtlsMode::Disable,
        }
    }
}

/// Both CRDs as a multi-document YAML stream, ready for `kubectl apply -f -` (what
/// `switchyard crd` prints).
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    let mut out = String::new();
    for crd in [AuthorizationPolicy::crd(), PeerAuthentication::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&crd)?);
    }
    Ok(out)
}

fn selector_labels(selector: Option<&WorkloadSelector>) -> Option<BTreeMap<String, String>> {
    selector
        .map(|s| s.match_labels.clone())
        .filter(|l| !l.is_empty())
}

/// An IP block: a CIDR, or a single address (a host prefix). Host bits are cleared.
fn ip_block(s: &str, field: FieldPath) -> Result<IpBlock, FieldError> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpBlock>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(IpBlock::from(ip));
    }
    Err(FieldError::new(
        field,
        format!("invalid ip block {s:?}: expected a CIDR like 10.0.0.0/16 or an address"),
    ))
}

fn ip_blocks(list: &[String], field: FieldPath) -> Result<Vec<IpBlock>, FieldError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| ip_block(s, field.clone().index(i)))
        .collect()
}

fn ports(list: &[u32], field: FieldPath) -> Result<Vec<u16>, FieldError> {
    list.iter()
        .enumerate()
        .map(|(i, p)| port_number(i64::from(*p), field.clone().index(i)))
        .collect()
}

/// Paths: `*`, or a path starting with `/` with at most one `*`, at its start or end.
fn paths(list: &[String], field: FieldPath) -> Result<Vec<String>, FieldError> {
    for (i, p) in list.iter().enumerate() {
        let inner = p
            .strip_prefix('*')
            .or_else(|| p.strip_suffix('*'))
            .unwrap_or(p);
        let ok = p == "*"
            || (!inner.contains('*')
                && !inner.is_empty()
                && (p.starts_with('/') || p.starts_with('*'))
                && !inner.chars().any(char::is_whitespace));
        if !ok {
            return Err(FieldError::new(
                field.clone().index(i),
                format!(
                    "{p:?} is not a path pattern: use an exact path (/a/b), a prefix (/a/*), a suffix (*.png) or *"
                ),
            ));
        }
    }
    Ok(list.to_vec())
}

/// Methods: HTTP tokens (`GET`, `POST`, ...), upper case as Envoy compares them exactly.
fn methods(list: &[String], field: FieldPath) -> Result<Vec<String>, FieldError> {
    for (i, m) in list.iter().enumerate() {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(FieldError::new(
                field.clone().index(i),
                format!("{m:?} is not an HTTP method (upper case letters, e.g. GET)"),
            ));
        }
    }
    Ok(list.to_vec())
}

impl AuthorizationPolicy {
    /// The model input (`key` is the policy's namespace and name).
    pub fn to_input(&self, key: ObjectKey) -> Result<AuthorizationPolicyInput, FieldError> {
        let mut rules = Vec::new();
        for (i, rule) in self.spec.rules.iter().enumerate() {
            let rf = FieldPath::at("spec.rules").index(i);
            let mut from = Vec::new();
            for (j, f) in rule.from.iter().enumerate() {
                let sf = rf.clone().key("from").index(j).key("source");
                let s = &f.source;
                from.push(PolicySource {
                    principals: s.principals.clone(),
                    not_principals: s.not_principals.clone(),
                    namespaces: s.namespaces.clone(),
                    not_namespaces: s.not_namespaces.clone(),
                    ip_blocks: ip_blocks(&s.ip_blocks, sf.clone().key("ipBlocks"))?,
                    not_ip_blocks: ip_blocks(&s.not_ip_blocks, sf.key("notIpBlocks"))?,
                });
            }
            let mut to = Vec::new();
            for (j, t) in rule.to.iter().enumerate() {
                let of = rf.clone().key("to").index(j).key("operation");
                let op = &t.operation;
                to.push(PolicyOperation {
                    ports: ports(&op.ports, of.clone().key("ports"))?,
                    not_ports: ports(&op.not_ports, of.clone().key("notPorts"))?,
                    paths: paths(&op.paths, of.clone().key("paths"))?,
                    not_paths: paths(&op.not_paths, of.clone().key("notPaths"))?,
                    methods: methods(&op.methods, of.clone().key("methods"))?,
                    not_methods: methods(&op.not_methods, of.key("notMethods"))?,
                });
            }
            rules.push(PolicyRule { from, to });
        }
        Ok(AuthorizationPolicyInput {
            key,
            selector: selector_labels(self.spec.selector.as_ref()),
            action: match self.spec.action {
                AuthorizationAction::Allow => PolicyAction::Allow,
                AuthorizationAction::Deny => PolicyAction::Deny,
            },
            rules,
        })
    }
}

impl PeerAuthentication {
    /// The model input (`key` is the resource's namespace and name).
    pub fn to_input(&self, key: ObjectKey) -> Result<PeerAuthenticationInput, FieldError> {
        let mut port_modes = BTreeMap::new();
        for (port, settings) in &self.spec.port_level_mtls {
            let field = FieldPath::at("spec.portLevelMtls").key(port.as_str());
            let n: i64 = port.trim().parse().map_err(|_| {
                FieldError::new(
                    field.clone(),
                    format!("invalid port {port:?}: keys are port numbers"),
                )
            })?;
            port_modes.insert(port_number(n, field)?, settings.mode.into());
        }
        Ok(PeerAuthenticationInput {
            key,
            selector: selector_labels(self.spec.selector.as_ref()),
            mode: self.spec.mtls.as_ref().and_then(|m| m.mode).map(Into::into),
            port_modes,
        })
    }
}
