//! The resources the follower accepted, as received (wire bytes and version), for the admin
//! `/config_dump`: Envoy's layout (`configs` of `ListenersConfigDump`, `ClustersConfigDump`,
//! `RoutesConfigDump`, `EndpointsConfigDump` with `include_eds`), proto field names, so tools
//! written for Envoy's dump read ours.
//!
//! It owns only this copy. Decoding to JSON loads the protobuf descriptor pool (a few MB)
//! on the first dump, never on the data path.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde_json::{Value, json};
use switchyard_protos::TypeUrl;

use super::follow::FollowStatus;

/// One resource: the accepted version in use, and the last rejected update if newer.
#[derive(Debug, Clone, Default)]
struct Raw {
    accepted: Option<(String, Bytes)>,
    /// Version and reason of the last rejected update (Envoy's `error_state`).
    rejected: Option<(String, String)>,
}

type Store = BTreeMap<TypeUrl, BTreeMap<String, Raw>>;

/// Resources by type and name; clones share them.
#[derive(Debug, Clone, Default)]
pub struct RawStore {
    inner: Arc<Mutex<Store>>,
}

/// The sections of a dump, in Envoy's order: (type, dump message, list field, entry field).
const SECTIONS: [(TypeUrl, &str, &str, &str); 4] = [
    (
        TypeUrl::Cluster,
        "ClustersConfigDump",
        "dynamic_active_clusters",
        "cluster",
    ),
    (
        TypeUrl::Listener,
        "ListenersConfigDump",
        "dynamic_listeners",
        "listener",
    ),
    (
        TypeUrl::RouteConfiguration,
        "RoutesConfigDump",
        "dynamic_route_configs",
        "route_config",
    ),
    (
        TypeUrl::ClusterLoadAssignment,
        "EndpointsConfigDump",
        "dynamic_endpoint_configs",
        "endpoint_config",
    ),
];

impl RawStore {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records an accepted resource (clearing an earlier rejection of it).
    pub fn accept(&self, t: TypeUrl, name: &str, version: &str, bytes: &[u8]) {
        self.lock().entry(t).or_default().insert(
            name.to_string(),
            Raw {
                accepted: Some((version.to_string(), Bytes::copy_from_slice(bytes))),
                rejected: None,
            },
        );
    }

    /// Records a rejected update of a resource; its accepted version (if any) stays.
    pub fn reject(&self, t: TypeUrl, name: &str, version: &str, details: &str) {
        self.lock()
            .entry(t)
            .or_default()
            .entry(name.to_string())
            .or_default()
            .rejected = Some((version.to_string(), details.to_string()));
    }

    /// Forgets a removed resource.
    pub fn remove(&self, t: TypeUrl, name: &str) {
        if let Some(m) = self.lock().get_mut(&t) {
            m.remove(name);
        }
    }

    /// Keeps only the resources of `t` whose names `keep` accepts (names no longer
    /// subscribed to).
    pub fn retain(&self, t: TypeUrl, keep: impl Fn(&String) -> bool) {
        if let Some(m) = self.lock().get_mut(&t) {
            m.retain(|k, _| keep(k));
        }
    }

    /// How many resources of `t` are in use.
    pub fn len(&self, t: TypeUrl) -> usize {
        self.lock()
            .get(&t)
            .map_or(0, |m| m.values().filter(|r| r.accepted.is_some()).count())
    }

    /// The dump: one `configs` entry per type with the type's last accepted response
    /// version, each resource with its own version; a resource whose last update was
    /// rejected carries Envoy's `error_state` (its accepted version, if any, stays in use).
    pub fn dump(&self, status: &FollowStatus, include_eds: bool) -> Value {
        // A copy (the bytes are shared): decoding, and the descriptor pool's first load, run
        // without blocking the follower.
        let store = self.lock().clone();
        let mut configs = Vec::new();
        for (t, message, list, entry) in SECTIONS {
            if t == TypeUrl::ClusterLoadAssignment && !include_eds {
                continue;
            }
            let resources: Vec<Value> = store
                .get(&t)
                .into_iter()
                .flatten()
                .map(|(name, raw)| {
                    let mut item = json!({});
                    if let Some((version, bytes)) = &raw.accepted {
                        let body = switchyard_protos::json::to_json_proto_names(t.as_str(), bytes)
                            .map(|mut v| {
                                if let Value::Object(m) = &mut v {
                                    m.insert("@type".into(), Value::String(t.as_str().into()));
                                }
                                v
                            })
                            .unwrap_or_else(|e| json!({ "error": e.to_string() }));
                        item = json!({ "version_info": version, entry: body });
                    }
                    if t == TypeUrl::Listener {
                        // Envoy nests an active listener under its state.
                        item = if raw.accepted.is_some() {
                            json!({ "name": name, "active_state": item })
                        } else {
                            json!({ "name": name })
                        };
                    }
                    if let Some((version, details)) = &raw.rejected {
                        item["error_state"] =
                            json!({ "version_info": version, "details": details });
                    }
                    item
                })
                .collect();
            let mut section = json!({
                "@type": format!("type.googleapis.com/envoy.admin.v3.{message}"),
                list: resources,
            });
            if let Some(v) = status.versions.get(t.short_name()) {
                section["version_info"] = Value::String(v.clone());
            }
            configs.push(section);
        }
        json!({ "configs": configs })
    }
}

/// Envoy's `SecretsConfigDump` for the pod's two secrets: `default` (the workload
/// certificate chain, the private key shown as `[redacted]` as Envoy does; version: the
/// certificate's serial, `last_updated`: its start of validity) and `ROOTCA` (the trust
/// bundle).
pub fn secrets_section(
    certificate: Option<(&switchyard_dataplane_runtime::tls::CertInfo, String)>,
    bundle_pem: &str,
) -> Value {
    const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    let mut secrets = Vec::new();
    if let Some((info, chain_pem)) = certificate {
        secrets.push(json!({
            "name": "default",
            "version_info": info.serial,
            "last_updated": info
                .not_before
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            "secret": {
                "@type": SECRET,
                "name": "default",
                "tls_certificate": {
                    "certificate_chain": { "inline_string": chain_pem },
                    "private_key": { "inline_string": "[redacted]" },
                },
            },
        }));
    }
    secrets.push(json!({
        "name": "ROOTCA",
        "secret": {
            "@type": SECRET,
            "name": "ROOTCA",
            "validation_context": { "trusted_ca": { "inline_string": bundle_pem } },
        },
    }));
    json!({
        "@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
        "dynamic_active_secrets": secrets,
    })
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use switchyard_protos::envoy::envoy::config::cluster::v3::Cluster;
    use switchyard_protos::envoy::envoy::config::endpoint::v3::ClusterLoadAssignment;

    use super::*;

    #[test]
    fn dumps_accepted_resources_in_envoys_layout_with_proto_field_names() {
        let store = RawStore::default();
        let cluster = Cluster {
            name: "outbound|80||web".into(),
            per_connection_buffer_limit_bytes: Some(switchyard_protos::wkt::UInt32Value {
                value: 1024,
            }),
            ..Default::default()
        };
        store.accept(
            TypeUrl::Cluster,
            "outbound|80||web",
            "v1",
            &cluster.encode_to_vec(),
        );
        let cla = ClusterLoadAssignment {
            cluster_name: "outbound|80||web".into(),
            ..Default::default()
        };
        store.accept(
            TypeUrl::ClusterLoadAssignment,
            "outbound|80||web",
            "e1",
            &cla.encode_to_vec(),
        );
        let mut status = FollowStatus::default();
        status.versions.insert("cds", "7".into());

        let dump = store.dump(&status, false);
        let configs = dump["configs"].as_array().unwrap();
        assert_eq!(configs.len(), 3, "no endpoints without include_eds: {dump}");
        let clusters = &configs[0];
        assert_eq!(
            clusters["@type"],
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"
        );
        assert_eq!(clusters["version_info"], "7");
        let c = &clusters["dynamic_active_clusters"][0];
        assert_eq!(c["version_info"], "v1");
        assert_eq!(c["cluster"]["name"], "outbound|80||web");
        assert_eq!(c["cluster"]["per_connection_buffer_limit_bytes"], 1024);
        assert_eq!(
            c["cluster"]["@type"],
            "type.googleapis.com/envoy.config.cluster.v3.Cluster"
        );
        assert!(c.get("error_state").is_none());

        let dump = store.dump(&status, true);
        assert_eq!(
            dump["configs"][3]["dynamic_endpoint_configs"][0]["endpoint_config"]["cluster_name"],
            "outbound|80||web"
        );

        // a rejected update: the last good resource stays, with the reason
        store.reject(
            TypeUrl::Cluster,
            "outbound|80||web",
            "v2",
            "cluster \"outbound|80||web\": lb_policy: unsupported",
        );
        let dump = store.dump(&status, false);
        let c = &dump["configs"][0]["dynamic_active_clusters"][0];
        assert_eq!(c["version_info"], "v1");
        assert_eq!(c["error_state"]["version_info"], "v2");
        assert!(
            c["error_state"]["details"]
                .as_str()
                .unwrap()
                .contains("lb_policy"),
            "{c}"
        );
        assert_eq!(store.len(TypeUrl::Cluster), 1);
        // accepted again: the error clears
        store.accept(
            TypeUrl::Cluster,
            "outbound|80||web",
            "v3",
            &cluster.encode_to_vec(),
        );
        let dump = store.dump(&status, false);
        assert!(
            dump["configs"][0]["dynamic_active_clusters"][0]
                .get("error_state")
                .is_none()
        );

        store.remove(TypeUrl::Cluster, "outbound|80||web");
        assert_eq!(store.len(TypeUrl::Cluster), 0);
    }
}
