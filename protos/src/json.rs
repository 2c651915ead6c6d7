//! JSON views of wire messages for admin and debug output (proto3 JSON mapping, `Any`
//! expanded), built on a descriptor pool holding the Envoy API and Switchyard's protos.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

static ENVOY_DESCRIPTORS: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));
static SWITCHYARD_DESCRIPTORS: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/switchyard_descriptors.bin"));

/// Why a message could not be shown as JSON.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The descriptor pool has no message of that name.
    #[error("no descriptor for message type {0:?}")]
    UnknownMessage(String),
    /// The bytes do not decode as that message.
    #[error("cannot decode {message}: {source}")]
    Decode {
        /// Fully qualified message name.
        message: String,
        /// Decoder error.
        source: prost::DecodeError,
    },
    /// serde_json refused the value.
    #[error("cannot serialise {message} as json: {source}")]
    Serialise {
        /// Fully qualified message name.
        message: String,
        /// Serialiser error.
        source: serde_json::Error,
    },
}

/// The pool with every Envoy and Switchyard message; built once.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool = DescriptorPool::new();
        // Both sets come from this crate's build script; failing to load them is a build bug,
        // so it is reported loudly and the pool stays usable for whatever did load.
        if let Err(e) = pool.decode_file_descriptor_set(ENVOY_DESCRIPTORS) {
            tracing::error!(error = %e, "envoy descriptor set did not load");
        }
        if let Err(e) = pool.decode_file_descriptor_set(SWITCHYARD_DESCRIPTORS) {
            tracing::error!(error = %e, "switchyard descriptor set did not load");
        }
        pool
    })
}

/// Decodes `bytes` as the message named by `type_url` (`type.googleapis.com/<name>` or the
/// bare name) and returns its proto3 JSON form.
pub fn to_json(type_url: &str, bytes: &[u8]) -> Result<serde_json::Value, JsonError> {
    to_json_with(type_url, bytes, false)
}

/// As [`to_json`], but with the proto field names (`max_connections`), as Envoy's admin
/// `/config_dump` prints them.
pub fn to_json_proto_names(type_url: &str, bytes: &[u8]) -> Result<serde_json::Value, JsonError> {
    to_json_with(type_url, bytes, true)
}

fn to_json_with(
    type_url: &str,
    bytes: &[u8],
    proto_names: bool,
) -> Result<serde_json::Value, JsonError> {
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    let desc = pool()
        .get_message_by_name(name)
        .ok_or_else(|| JsonError::UnknownMessage(name.to_string()))?;
    let msg = DynamicMessage::decode(desc, bytes).map_err(|source| JsonError::Decode {
        message: name.to_string(),
        source,
    })?;
    let options = SerializeOptions::new()
        .skip_default_fields(true)
        .use_proto_field_name(proto_names);
    msg.serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|source| JsonError::Serialise {
            message: name.to_string(),
            source,
        })
}

/// JSON of a packed [`crate::wkt::Any`].
pub fn any_to_json(any: &crate::wkt::Any) -> Result<serde_json::Value, JsonError> {
    to_json(&any.type_url, &any.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envoy::envoy::config::cluster::v3::Cluster;
    use crate::switchyard::workload::v1::Workload;

    #[test]
    fn envoy_and_switchyard_messages_render_as_json() {
        let c = Cluster {
            name: "outbound|80||a.b.svc.cluster.local".into(),
            ..Default::default()
        };
        let j = any_to_json(&crate::pack(&c)).unwrap();
        assert_eq!(j["name"], "outbound|80||a.b.svc.cluster.local");

        let w = Workload {
            uid: "ns/pod".into(),
            addresses: vec![vec![10, 0, 0, 1]],
            ..Default::default()
        };
        let j = any_to_json(&crate::pack(&w)).unwrap();
        assert_eq!(j["uid"], "ns/pod");
        // bytes use base64 in proto3 JSON
        assert_eq!(j["addresses"][0], "CgAAAQ==");
    }

    #[test]
    fn unknown_message_is_an_error() {
        let err = to_json("type.googleapis.com/nope.Nope", &[]).unwrap_err();
        assert!(matches!(err, JsonError::UnknownMessage(_)));
    }
}
