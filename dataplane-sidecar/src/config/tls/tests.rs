#![allow(clippy::unwrap_used)]

use super::*;
use switchyard_protos::envoy::envoy::r#type::matcher::v3 as matcher;
use switchyard_protos::pack;

fn san(id: &str) -> tls::SubjectAltNameMatcher {
    tls::SubjectAltNameMatcher {
        san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
        matcher: Some(matcher::StringMatcher {
            match_pattern: Some(MatchPattern::Exact(id.into())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn upstream_ctx(sans: Vec<tls::SubjectAltNameMatcher>) -> tls::UpstreamTlsContext {
    tls::UpstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_params: Some(tls::TlsParameters {
                tls_minimum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv13 as i32,
                tls_maximum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv13 as i32,
                ..Default::default()
            }),
            tls_certificate_sds_secret_configs: vec![tls::SdsSecretConfig {
                name: WORKLOAD_CERT.into(),
                ..Default::default()
            }],
            alpn_protocols: vec!["h2".into()],
            validation_context_type: Some(
                tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                    tls::common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(tls::CertificateValidationContext {
                            match_typed_subject_alt_names: sans,
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(tls::SdsSecretConfig {
                            name: ROOT_CA.into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn socket(ctx: &tls::UpstreamTlsContext) -> core::TransportSocket {
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(pack(ctx))),
    }
}

#[test]
fn upstream_sans_become_expected_identities() {
    let ctx = upstream_ctx(vec![
        san("spiffe://cluster.local/ns/b/sa/y"),
        san("spiffe://cluster.local/ns/a/sa/x"),
    ]);
    let m = upstream(&socket(&ctx)).unwrap().unwrap();
    let a = SpiffeId::new("cluster.local", "a", "x");
    let b = SpiffeId::new("cluster.local", "b", "y");
    assert_eq!(m.identities, vec![a.clone(), b.clone()]);
    assert_eq!(m.alpn, ["h2"]);
    assert_eq!(m.expected(), Some(Expected::AnyOf(vec![a, b])));
}

#[test]
fn weaker_verification_is_rejected() {
    let mut dns = san("a.example");
    dns.san_type = tls::subject_alt_name_matcher::SanType::Dns as i32;
    let e = upstream(&socket(&upstream_ctx(vec![dns]))).unwrap_err();
    let e = e.into_error(switchyard_protos::TypeUrl::Cluster, "c");
    assert_eq!(
        e.field(),
        Some(
            "typed_config.common_tls_context.combined_validation_context.\
             default_validation_context.match_typed_subject_alt_names[0]"
        ),
        "{e}"
    );

    let mut pinned = upstream_ctx(vec![]);
    if let Some(tls::common_tls_context::ValidationContextType::CombinedValidationContext(cv)) =
        pinned
            .common_tls_context
            .as_mut()
            .unwrap()
            .validation_context_type
            .as_mut()
    {
        cv.default_validation_context
            .as_mut()
            .unwrap()
            .verify_certificate_hash = vec!["ab".into()];
    }
    let e = upstream(&socket(&pinned))
        .unwrap_err()
        .into_error(switchyard_protos::TypeUrl::Cluster, "c");
    assert!(
        e.field().unwrap().ends_with("verify_certificate_hash"),
        "{e}"
    );
}

#[test]
fn raw_buffer_is_plaintext() {
    let ts = core::TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(pack(
            &RawBuffer {},
        ))),
    };
    assert_eq!(upstream(&ts).unwrap(), None);
}
