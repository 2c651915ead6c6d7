//! SDS: the `ROOTCA` secret every proxy is sent, and the TLS contexts of the Envoy API that
//! refer to SDS secrets.
//!
//! The control plane never holds a workload key, so `default` (the workload certificate) is
//! always fetched from the proxy's own agent through the static cluster [`SDS_CLUSTER`] (a
//! Unix socket in the proxy's bootstrap); `ROOTCA` comes over ADS, so the control plane sees
//! each proxy ACK a new trust bundle (root rotation waits for that).

use std::sync::Arc;

use switchyard_model::MtlsMode;
use switchyard_model::SpiffeId;
use switchyard_protos::envoy::envoy::config::core::v3 as core;
use switchyard_protos::envoy::envoy::extensions::transport_sockets::tls::v3 as tls;
use switchyard_protos::envoy::envoy::r#type::matcher::v3 as matcher;
use switchyard_protos::{TypeUrl, pack, wkt};

use crate::snapshot::Resource;

/// The trust bundle secret.
pub const ROOT_CA: &str = "ROOTCA";
/// The workload certificate secret (served by the proxy's own agent).
pub const WORKLOAD_CERT: &str = "default";
/// Static bootstrap cluster of the proxy's SDS agent.
pub const SDS_CLUSTER: &str = "sds-grpc";
/// Endpoint metadata key (under `envoy.transport_socket_match`) that selects mTLS.
pub const TLS_MODE_KEY: &str = "tlsMode";
/// Its value for endpoints whose proxy terminates Switchyard mTLS.
pub const TLS_MODE_MTLS: &str = "switchyard-mtls";

/// `ROOTCA`: the roots in `bundle` as one validation context; `None` for an empty bundle
/// (an empty `trusted_ca` would make Envoy accept any peer).
pub fn root_ca(bundle: &[String]) -> Option<Arc<Resource>> {
    if bundle.is_empty() {
        return None;
    }
    let mut pem = String::new();
    for cert in bundle {
        pem.push_str(cert.trim_end());
        pem.push('\n');
    }
    let secret = tls::Secret {
        name: ROOT_CA.into(),
        r#type: Some(tls::secret::Type::ValidationContext(
            tls::CertificateValidationContext {
                trusted_ca: Some(core::DataSource {
                    specifier: Some(core::data_source::Specifier::InlineString(pem)),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    };
    Some(Resource::new(TypeUrl::Secret, ROOT_CA, &secret))
}

fn agent_sds(name: &str) -> tls::SdsSecretConfig {
    tls::SdsSecretConfig {
        name: name.into(),
        sds_config: Some(core::ConfigSource {
            resource_api_version: core::ApiVersion::V3 as i32,
            config_source_specifier: Some(
                core::config_source::ConfigSourceSpecifier::ApiConfigSource(
                    core::ApiConfigSource {
                        api_type: core::api_config_source::ApiType::Grpc as i32,
                        transport_api_version: core::ApiVersion::V3 as i32,
                        grpc_services: vec![core::GrpcService {
                            target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
                                core::grpc_service::EnvoyGrpc {
                                    cluster_name: SDS_CLUSTER.into(),
                                    ..Default::default()
                                },
                            )),
                            ..Default::default()
                        }],
                        set_node_on_first_message_only: true,
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
    }
}

fn ads_sds(name: &str) -> tls::SdsSecretConfig {
    tls::SdsSecretConfig {
        name: name.into(),
        sds_config: Some(core::ConfigSource {
            resource_api_version: core::ApiVersion::V3 as i32,
            config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
                core::AggregatedConfigSource {},
            )),
            ..Default::default()
        }),
    }
}

/// Certificate from the agent, roots from ADS, peer SANs from `sans` (any of them).
fn common(sans: &[&SpiffeId], alpn: &[&str]) -> tls::CommonTlsContext {
    tls::CommonTlsContext {
        tls_params: Some(tls::TlsParameters {
            // TLS 1.3 only: Envoy's upstream default maximum is 1.2, so both ends are set.
            tls_minimum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv13 as i32,
            tls_maximum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv13 as i32,
            ..Default::default()
        }),
        tls_certificate_sds_secret_configs: vec![agent_sds(WORKLOAD_CERT)],
        alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
        validation_context_type: Some(
            tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                tls::common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(tls::CertificateValidationContext {
                        match_typed_subject_alt_names: sans
                            .iter()
                            .map(|id| tls::SubjectAltNameMatcher {
                                san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
                                matcher: Some(matcher::StringMatcher {
                                    match_pattern: Some(
                                        matcher::string_matcher::MatchPattern::Exact(
                                            id.to_string(),
                                        ),
                                    ),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(ads_sds(ROOT_CA)),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    }
}

/// Upstream mTLS to a destination whose certificate must carry one of `sans`.
pub fn upstream_mtls(sans: &[&SpiffeId], http2: bool) -> core::TransportSocket {
    let ctx = tls::UpstreamTlsContext {
        common_tls_context: Some(common(sans, if http2 { &["h2"] } else { &[] })),
        ..Default::default()
    };
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(pack(&ctx))),
    }
}

/// Inbound mTLS: any client with a certificate from the bundle (authorization decides what
/// it may do).
pub fn downstream_mtls() -> core::TransportSocket {
    downstream(&["h2", "http/1.1"])
}

/// Inbound mTLS of the HBONE port: as [`downstream_mtls`], ALPN `h2` only.
pub fn downstream_hbone_mtls() -> core::TransportSocket {
    downstream(&["h2"])
}

fn downstream(alpn: &[&str]) -> core::TransportSocket {
    let ctx = tls::DownstreamTlsContext {
        common_tls_context: Some(common(&[], alpn)),
        require_client_certificate: Some(wkt::BoolValue { value: true }),
        ..Default::default()
    };
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(pack(&ctx))),
    }
}

/// Whether an inbound port accepts mTLS and whether it accepts plaintext.
pub fn inbound_accepts(mode: MtlsMode) -> (bool, bool) {
    match mode {
        MtlsMode::Strict => (true, false),
        MtlsMode::Permissive => (true, true),
        MtlsMode::Disable => (false, true),
    }
}
