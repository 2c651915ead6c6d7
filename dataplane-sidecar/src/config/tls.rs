//! TLS transport sockets as the Envoy renderer writes them (see `xds-server`'s
//! `render/secret.rs`): the workload certificate from the local agent (SDS `default`), roots
//! from `ROOTCA`, peer SPIFFE IDs as exact URI SAN matchers, TLS 1.3.
//!
//! The sidecar holds its own key and bundle, so the SDS config sources are not followed; what
//! is kept is what the data path must enforce: which peer identities are acceptable and the
//! ALPN the upstream app expects. Anything else in a TLS context (inline certificates, other
//! trust anchors, SAN types other than URI, pinned hashes, ...) is rejected rather than
//! ignored, since ignoring it would weaken or change peer verification.

use switchyard_dataplane_runtime::tls::Expected;
use switchyard_dataplane_runtime::xds::ROOT_CA;
use switchyard_model::SpiffeId;
use switchyard_protos::envoy::envoy::config::core::v3 as core;
use switchyard_protos::envoy::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use switchyard_protos::envoy::envoy::extensions::transport_sockets::tls::v3 as tls;
use switchyard_protos::envoy::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

use super::error::{At, FieldError, reject_rest, unpack};

/// The SDS name of the workload certificate (served by the pod's own agent).
pub const WORKLOAD_CERT: &str = "default";

/// Upstream mTLS as a cluster asks for it. The sidecar carries such connections over HBONE
/// (HTTP/2 CONNECT over mTLS to the endpoint's port 15008) instead of TLS to the app port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamMtls {
    /// Acceptable peer identities (any of them); empty: any identity the trust bundle
    /// vouches for.
    pub identities: Vec<SpiffeId>,
    /// ALPN the upstream app speaks inside the tunnel (`h2` for HTTP/2 clusters).
    pub alpn: Vec<String>,
}

impl UpstreamMtls {
    /// What the data path checks the peer against: [`Expected::AnyOf`] the identities;
    /// `None` when the cluster named none (the caller then accepts its own trust domain).
    pub fn expected(&self) -> Option<Expected> {
        match self.identities.as_slice() {
            [] => None,
            ids => Some(Expected::AnyOf(ids.to_vec())),
        }
    }
}

/// Inbound mTLS termination on a filter chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownstreamMtls {
    /// Whether clients must present a certificate (the renderer always asks).
    pub require_client_certificate: bool,
    /// Acceptable client identities; empty: any the bundle vouches for (authorization
    /// decides the rest).
    pub identities: Vec<SpiffeId>,
    /// ALPN offered to clients.
    pub alpn: Vec<String>,
}

struct Common {
    identities: Vec<SpiffeId>,
    alpn: Vec<String>,
}

/// The TLS config of an upstream transport socket; `None` for plaintext (raw buffer).
pub(crate) fn upstream(ts: &core::TransportSocket) -> Result<Option<UpstreamMtls>, FieldError> {
    let Some(any) = typed_config(ts)? else {
        return Ok(None);
    };
    if any.type_url == <RawBuffer as prost::Name>::type_url() {
        return Ok(None);
    }
    let mut ctx: tls::UpstreamTlsContext = unpack("typed_config", any)?;
    let common = common(ctx.common_tls_context.take())
        .at("common_tls_context")
        .at("typed_config")?;
    // SNI and session-cache sizing do not apply to an HBONE tunnel.
    ctx.sni.clear();
    ctx.max_session_keys = None;
    reject_rest(&ctx).at("typed_config")?;
    Ok(Some(UpstreamMtls {
        identities: common.identities,
        alpn: common.alpn,
    }))
}

/// The TLS config of a downstream transport socket; `None` for plaintext (raw buffer).
pub(crate) fn downstream(ts: &core::TransportSocket) -> Result<Option<DownstreamMtls>, FieldError> {
    let Some(any) = typed_config(ts)? else {
        return Ok(None);
    };
    if any.type_url == <RawBuffer as prost::Name>::type_url() {
        return Ok(None);
    }
    let mut ctx: tls::DownstreamTlsContext = unpack("typed_config", any)?;
    let common = common(ctx.common_tls_context.take())
        .at("common_tls_context")
        .at("typed_config")?;
    let require_client_certificate = ctx
        .require_client_certificate
        .take()
        .is_some_and(|b| b.value);
    // Session resumption settings are tuning, not semantics.
    ctx.disable_stateful_session_resumption = false;
    ctx.session_timeout = None;
    ctx.session_ticket_keys_type = None;
    reject_rest(&ctx).at("typed_config")?;
    Ok(Some(DownstreamMtls {
        require_client_certificate,
        identities: common.identities,
        alpn: common.alpn,
    }))
}

fn typed_config(
    ts: &core::TransportSocket,
) -> Result<Option<&switchyard_protos::wkt::Any>, FieldError> {
    match &ts.config_type {
        Some(core::transport_socket::ConfigType::TypedConfig(any)) => Ok(Some(any)),
        None if ts.name == "envoy.transport_sockets.raw_buffer" || ts.name == "raw_buffer" => {
            Ok(None)
        }
        None => Err(FieldError::invalid(
            "typed_config",
            format!("transport socket {:?} has no config", ts.name),
        )),
    }
}

fn common(ctx: Option<tls::CommonTlsContext>) -> Result<Common, FieldError> {
    let Some(mut c) = ctx else {
        return Err(FieldError::invalid("", "missing"));
    };
    if let Some(p) = c.tls_params.take() {
        use tls::tls_parameters::TlsProtocol;
        let max = p.tls_maximum_protocol_version;
        if max != TlsProtocol::TlsAuto as i32 && max != TlsProtocol::TlSv13 as i32 {
            return Err(FieldError::unsupported(
                "tls_maximum_protocol_version",
                "the sidecar speaks TLS 1.3 only",
            ))
            .at("tls_params");
        }
        reject_rest(&tls::TlsParameters {
            tls_minimum_protocol_version: 0,
            tls_maximum_protocol_version: 0,
            ..p
        })
        .at("tls_params")?;
    }
    match c.tls_certificate_sds_secret_configs.as_slice() {
        // The SDS source is the pod's own agent: the sidecar holds that key itself.
        [one] if one.name == WORKLOAD_CERT => {}
        [] => {
            return Err(FieldError::invalid(
                "tls_certificate_sds_secret_configs",
                format!("no certificate: mTLS needs the workload certificate {WORKLOAD_CERT:?}"),
            ));
        }
        _ => {
            return Err(FieldError::unsupported(
                "tls_certificate_sds_secret_configs",
                format!("certificates other than the workload certificate {WORKLOAD_CERT:?}"),
            ));
        }
    }
    c.tls_certificate_sds_secret_configs.clear();
    let alpn = std::mem::take(&mut c.alpn_protocols);
    let identities = match c.validation_context_type.take() {
        None => {
            return Err(FieldError::unsupported(
                "validation_context_type",
                "TLS without peer verification",
            ));
        }
        Some(tls::common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(
            s,
        )) => {
            roots(&s).at("validation_context_sds_secret_config")?;
            Vec::new()
        }
        Some(tls::common_tls_context::ValidationContextType::CombinedValidationContext(mut cv)) => {
            let Some(s) = cv.validation_context_sds_secret_config.take() else {
                return Err(FieldError::unsupported(
                    "validation_context_sds_secret_config",
                    format!("trust anchors other than the {ROOT_CA} bundle"),
                ))
                .at("combined_validation_context");
            };
            roots(&s)
                .at("validation_context_sds_secret_config")
                .at("combined_validation_context")?;
            let ids = match cv.default_validation_context.take() {
                Some(v) => sans(v)
                    .at("default_validation_context")
                    .at("combined_validation_context")?,
                None => Vec::new(),
            };
            reject_rest(&cv).at("combined_validation_context")?;
            ids
        }
        Some(_) => {
            return Err(FieldError::unsupported(
                "validation_context_type",
                format!("inline or provider trust anchors (the sidecar verifies with {ROOT_CA})"),
            ));
        }
    };
    reject_rest(&c)?;
    Ok(Common { identities, alpn })
}

fn roots(s: &tls::SdsSecretConfig) -> Result<(), FieldError> {
    if s.name == ROOT_CA {
        Ok(())
    } else {
        Err(FieldError::unsupported(
            "name",
            format!("trust bundle {:?} (only {ROOT_CA} is followed)", s.name),
        ))
    }
}

/// The SPIFFE IDs of exact URI SAN matchers.
#[allow(deprecated)] // match_subject_alt_names: still valid xDS
fn sans(mut v: tls::CertificateValidationContext) -> Result<Vec<SpiffeId>, FieldError> {
    let mut ids = Vec::new();
    for (i, m) in std::mem::take(&mut v.match_typed_subject_alt_names)
        .into_iter()
        .enumerate()
    {
        let uri = m.san_type == tls::subject_alt_name_matcher::SanType::Uri as i32;
        let value = match m.matcher.as_ref().and_then(|s| s.match_pattern.as_ref()) {
            Some(MatchPattern::Exact(v)) if uri && m.oid.is_empty() => v,
            _ => {
                return Err(FieldError::unsupported(
                    "",
                    "SAN matchers other than exact URI (SPIFFE ID) matches",
                ))
                .at_index("match_typed_subject_alt_names", i);
            }
        };
        ids.push(spiffe(value).at_index("match_typed_subject_alt_names", i)?);
    }
    // The deprecated untyped form matches any SAN type; an exact SPIFFE ID can only be a URI.
    for (i, m) in std::mem::take(&mut v.match_subject_alt_names)
        .into_iter()
        .enumerate()
    {
        match &m.match_pattern {
            Some(MatchPattern::Exact(value)) => {
                ids.push(spiffe(value).at_index("match_subject_alt_names", i)?)
            }
            _ => {
                return Err(FieldError::unsupported(
                    "",
                    "SAN matchers other than exact SPIFFE IDs",
                ))
                .at_index("match_subject_alt_names", i);
            }
        }
    }
    reject_rest(&v)?;
    ids.sort();
    ids.dedup();
    Ok(ids)
}

fn spiffe(value: &str) -> Result<SpiffeId, FieldError> {
    value
        .parse()
        .map_err(|e| FieldError::invalid("matcher.exact", format!("{e}")))
}

#[cfg(test)]
mod tests;
