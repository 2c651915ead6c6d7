//! The certificate service end to end: tokens, CSR policy, node-agent authorisation, audit.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use switchyard_ca::token::{Claims, TokenAuthority};
use switchyard_protos::switchyard::ca::v1::CreateCertificateRequest;
use switchyard_protos::switchyard::ca::v1::certificate_service_client::CertificateServiceClient;
use switchyard_test_support::manifests::{namespace, node, pod_on};
use switchyard_tests::ControlPlane;
use tonic::Code;
use x509_parser::prelude::*;

fn csr(sans: Vec<SanType>, ca: bool) -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = sans;
    if ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    p.serialize_request(&key).unwrap().pem().unwrap()
}

fn spiffe(ns: &str, sa: &str) -> SanType {
    SanType::URI(
        format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
            .try_into()
            .unwrap(),
    )
}

async fn ask(
    cp: &ControlPlane,
    token: Option<&str>,
    csr_pem: String,
    impersonate: &str,
) -> Result<Vec<String>, tonic::Status> {
    let mut client = CertificateServiceClient::connect(format!("http://{}", cp.xds()))
        .await
        .unwrap()
        .max_encoding_message_size(8 << 20);
    let mut req = tonic::Request::new(CreateCertificateRequest {
        csr: csr_pem,
        validity_seconds: 600,
        impersonated_identity: impersonate.into(),
        metadata: None,
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    client
        .create_certificate(req)
        .await
        .map(|r| r.into_inner().cert_chain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_service_authenticates_authorises_and_signs() {
    let cp = ControlPlane::start(&[(
        "mesh.yaml",
        vec![
            namespace("default", None),
            node("node-1", "10.255.0.1", "a"),
            node("node-2", "10.255.0.2", "b"),
            pod_on("default", "echo-1", "echo", "10.244.1.2", Some("node-1")),
            pod_on("default", "web-1", "web", "10.244.2.2", Some("node-2")),
        ],
    )])
    .await
    .unwrap();
    let tokens = TokenAuthority::load_or_create(cp.ca_dir.path()).unwrap();
    let echo = tokens.create("default", "echo", None, Duration::from_secs(60));

    // the caller's own identity: signed, chain verifies, validity as asked
    let chain = ask(
        &cp,
        Some(&echo),
        csr(vec![spiffe("default", "echo")], false),
        "",
    )
    .await
    .unwrap();
    assert_eq!(chain.len(), 2);
    let leaf_der = ::pem::parse(&chain[0]).unwrap().contents().to_vec();
    let root_der = ::pem::parse(&chain[1]).unwrap().contents().to_vec();
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    leaf.verify_signature(Some(root.public_key())).unwrap();
    let life = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!((600..=660).contains(&life), "{life}");

    // a node agent may ask for a pod on its node, not for one elsewhere
    let ztunnel1 = tokens.create(
        "switchyard-system",
        "ztunnel",
        Some("node-1"),
        Duration::from_secs(60),
    );
    ask(
        &cp,
        Some(&ztunnel1),
        csr(vec![spiffe("default", "echo")], false),
        "spiffe://cluster.local/ns/default/sa/echo",
    )
    .await
    .unwrap();
    let refused = |r: Result<Vec<String>, tonic::Status>, code: Code, needle: &str| {
        let s = r.expect_err(needle);
        assert_eq!(s.code(), code, "{needle}: {s:?}");
        assert!(s.message().contains(needle), "{needle}: {}", s.message());
    };
    refused(
        ask(
            &cp,
            Some(&ztunnel1),
            csr(vec![spiffe("default", "web")], false),
            "spiffe://cluster.local/ns/default/sa/web",
        )
        .await,
        Code::PermissionDenied,
        "no pod with that service account runs on node-1",
    );
    // a token for SA echo asking for SA web
    refused(
        ask(
            &cp,
            Some(&echo),
            csr(vec![spiffe("default", "web")], false),
            "",
        )
        .await,
        Code::PermissionDenied,
        "may only ask for its own identity",
    );
    // tokens: none, expired, wrong audience, bad signature
    refused(
        ask(&cp, None, csr(vec![spiffe("default", "echo")], false), "").await,
        Code::Unauthenticated,
        "no credentials",
    );
    let now = tokens.create("default", "echo", None, Duration::from_secs(0));
    refused(
        ask(
            &cp,
            Some(&now),
            csr(vec![spiffe("default", "echo")], false),
            "",
        )
        .await,
        Code::Unauthenticated,
        "expired",
    );
    let wrong_aud = tokens.sign(&Claims {
        ns: "default".into(),
        sa: "echo".into(),
        node: None,
        aud: "kubernetes".into(),
        iat: 0,
        exp: u64::MAX / 2,
    });
    refused(
        ask(
            &cp,
            Some(&wrong_aud),
            csr(vec![spiffe("default", "echo")], false),
            "",
        )
        .await,
        Code::Unauthenticated,
        "audience",
    );
    let forged = TokenAuthority::new(b"not the control plane").create(
        "default",
        "echo",
        None,
        Duration::from_secs(60),
    );
    refused(
        ask(
            &cp,
            Some(&forged),
            csr(vec![spiffe("default", "echo")], false),
            "",
        )
        .await,
        Code::Unauthenticated,
        "signature",
    );
    // CSRs: not PEM, two SANs, only DNS, CA:true, 1 MB of garbage
    refused(
        ask(&cp, Some(&echo), "hello".into(), "").await,
        Code::InvalidArgument,
        "not a PEM",
    );
    refused(
        ask(
            &cp,
            Some(&echo),
            csr(
                vec![spiffe("default", "echo"), spiffe("default", "web")],
                false,
            ),
            "",
        )
        .await,
        Code::InvalidArgument,
        "exactly one URI SAN",
    );
    refused(
        ask(
            &cp,
            Some(&echo),
            csr(vec![SanType::DnsName("echo".try_into().unwrap())], false),
            "",
        )
        .await,
        Code::InvalidArgument,
        "found DNS",
    );
    refused(
        ask(
            &cp,
            Some(&echo),
            csr(vec![spiffe("default", "echo")], true),
            "",
        )
        .await,
        Code::InvalidArgument,
        "CA:true",
    );
    refused(
        ask(&cp, Some(&echo), "x".repeat(1 << 20), "").await,
        Code::InvalidArgument,
        "limit",
    );
    // a tampered signature
    let good = csr(vec![spiffe("default", "echo")], false);
    let mut der = ::pem::parse(&good).unwrap().contents().to_vec();
    let n = der.len();
    der[n - 2] ^= 0x40;
    let bad = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der));
    let s = ask(&cp, Some(&echo), bad, "").await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    // refusals do not hold up anyone else: a burst of 1 MB garbage requests in parallel with
    // good ones, and every good one is signed promptly
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (cp_addr, token) = (cp.xds(), echo.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = CertificateServiceClient::connect(format!("http://{cp_addr}"))
                .await
                .unwrap()
                .max_encoding_message_size(8 << 20);
            let body = if i % 2 == 0 {
                "x".repeat(1 << 20)
            } else {
                csr(vec![spiffe("default", "echo")], false)
            };
            let mut req = tonic::Request::new(CreateCertificateRequest {
                csr: body,
                validity_seconds: 600,
                impersonated_identity: String::new(),
                metadata: None,
            });
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            (i % 2 == 1, client.create_certificate(req).await.is_ok())
        }));
    }
    for t in tasks {
        let (good, ok) = t.await.unwrap();
        assert_eq!(good, ok, "good requests signed, garbage refused");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the burst took {:?}",
        started.elapsed()
    );
    // and the service still serves well-behaved callers
    ask(
        &cp,
        Some(&echo),
        csr(vec![spiffe("default", "echo")], false),
        "",
    )
    .await
    .unwrap();
    // every decision is counted by verdict
    let (_, metrics) = cp.admin("/metrics").await.unwrap();
    for verdict in ["allow", "denied", "invalid", "unauthenticated"] {
        let line = format!("switchyard_ca_requests_total{{verdict=\"{verdict}\"}}");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
    assert!(
        metrics.contains("switchyard_ca_bundle_roots 1"),
        "{metrics}"
    );
}

/// Port 15012: the control plane presents a certificate from its own CA for
/// `ns/switchyard-system/sa/switchyard`; a token works there too, a still-valid certificate
/// alone renews the same identity (and only that one), a certificate from another CA never
/// gets a handshake, and ADS works over the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_port_serves_tokens_renewal_over_mtls_and_ads() {
    use switchyard_dataplane_runtime::identity::{CaClient, CaTransport, control_plane_identity};
    use switchyard_dataplane_runtime::tls::{IdentityStore, TrustBundle};

    let (cp, echo, token) = echo_mesh().await;
    let root = std::fs::read_to_string(cp.ca_dir.path().join("root-cert.pem")).unwrap();
    let store = IdentityStore::new(TrustBundle::from_pem(&root).unwrap());
    let tls = |store: &IdentityStore, token: Option<String>| {
        CaClient::new(
            cp.server.xds_tls_address(),
            CaTransport::Tls {
                server: control_plane_identity("cluster.local"),
                store: store.clone(),
            },
            token,
        )
        .unwrap()
    };
    let other: switchyard_model::SpiffeId =
        "spiffe://cluster.local/ns/default/sa/web".parse().unwrap();

    // first certificate: token over TLS
    let first = tls(&store, Some(token))
        .renew(&store, &echo, Some(Duration::from_secs(300)), false)
        .await
        .unwrap();
    // renewal: no token, the current certificate is the credential
    let mut renewer = tls(&store, None);
    let second = renewer
        .renew(&store, &echo, Some(Duration::from_secs(300)), false)
        .await
        .unwrap();
    assert_ne!(first.info.serial, second.info.serial);
    assert_eq!(second.info.id, echo);
    // ... but only for the same identity
    let err = renewer
        .renew(&store, &other, Some(Duration::from_secs(300)), false)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("PermissionDenied") && msg.contains("sa/web"),
        "{msg}"
    );
    // no credential at all
    let empty = IdentityStore::new(TrustBundle::from_pem(&root).unwrap());
    let err = tls(&empty, None)
        .renew(&empty, &echo, None, false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Unauthenticated"), "{err}");

    // a client certificate from another CA: the handshake itself fails
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = switchyard_ca::load_or_create_root(
        foreign_dir.path(),
        switchyard_ca::AuthorityConfig::default(),
    )
    .unwrap();
    let (csr_pem, key) = switchyard_dataplane_runtime::identity::generate_csr(&echo).unwrap();
    let checked = switchyard_ca::check_csr(&csr_pem, "cluster.local").unwrap();
    let forged = foreign.issue(&checked, &echo, None).unwrap();
    // trusts our root (to accept the server) but holds a foreign client certificate
    let mixed =
        IdentityStore::new(TrustBundle::from_pem(&format!("{root}{}", forged.chain[1])).unwrap());
    mixed.set_certificate(&forged.chain, &key).unwrap();
    let err = tls(&mixed, None)
        .renew(&mixed, &echo, None, false)
        .await
        .unwrap_err();
    // TLS 1.3: the server refuses the client certificate after the client thinks the
    // handshake is done, so it surfaces on the request as a transport failure; what matters is
    // that the service never saw it (no gRPC status of its own).
    assert!(
        matches!(err, switchyard_dataplane_runtime::identity::IdentityError::Refused { code, .. }
            if matches!(code, Code::Unavailable | Code::Unknown | Code::Cancelled)),
        "{err}"
    );

    // a client that expects another server identity refuses the control plane
    let wrong_server = CaClient::new(
        cp.server.xds_tls_address(),
        CaTransport::Tls {
            server: other.clone(),
            store: store.clone(),
        },
        None,
    )
    .unwrap()
    .renew(&store, &echo, None, false)
    .await
    .unwrap_err();
    assert!(
        matches!(
            wrong_server,
            switchyard_dataplane_runtime::identity::IdentityError::Refused {
                code: Code::Unavailable,
                ..
            }
        ),
        "{wrong_server}"
    );

    // ADS on the same port: ROOTCA over delta, through TLS
    use switchyard_protos::envoy::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    use switchyard_protos::envoy::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    let channel = switchyard_dataplane_runtime::identity::control_plane_channel(
        cp.server.xds_tls_address(),
        &CaTransport::Tls {
            server: control_plane_identity("cluster.local"),
            store: store.clone(),
        },
        None,
    )
    .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(DeltaDiscoveryRequest {
        node: Some(switchyard_test_support::ads::node(
            "envoy~10.244.1.2~echo-1.default~default.svc.cluster.local",
            &[],
        )),
        type_url: switchyard_protos::TypeUrl::Secret.as_str().into(),
        resource_names_subscribe: vec!["ROOTCA".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = AggregatedDiscoveryServiceClient::new(channel)
        .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let resp = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.resources.len(), 1);
    assert_eq!(resp.resources[0].name, "ROOTCA");
}

/// A restarted control plane keeps its root and token key: certificates issued before still
/// chain to the bundle it serves, and tokens issued before are still accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_root_and_earlier_certificates_verify() {
    use switchyard_dataplane_runtime::identity::{CaClient, CaTransport};
    use switchyard_dataplane_runtime::tls::{IdentityStore, TrustBundle};

    let (cp, echo, token) = echo_mesh().await;
    let before = cp.server.trust().authority().bundle().to_vec();
    let store = IdentityStore::new(TrustBundle::from_pem(&before.concat()).unwrap());
    let issued = CaClient::new(cp.xds(), CaTransport::Plaintext, Some(token.clone()))
        .unwrap()
        .renew(&store, &echo, None, false)
        .await
        .unwrap();
    let ControlPlane {
        manifests,
        server,
        ca_dir,
    } = cp;
    server.stop().await;

    let again = switchyard_xds_server::Server::start(switchyard_xds_server::Config::for_tests(
        manifests.path(),
        ca_dir.path(),
    ))
    .await
    .unwrap();
    let after = again.trust().authority().bundle().to_vec();
    assert_eq!(after, before, "same root after a restart");
    // the earlier leaf verifies against the bundle served now
    let root_der = ::pem::parse(&after[0]).unwrap().contents().to_vec();
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    let leaf_der = ::pem::parse(&issued.chain_pem[0])
        .unwrap()
        .contents()
        .to_vec();
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    leaf.verify_signature(Some(root.public_key())).unwrap();
    // and the token from before still works
    let store = IdentityStore::new(TrustBundle::from_pem(&after.concat()).unwrap());
    CaClient::new(again.xds_address(), CaTransport::Plaintext, Some(token))
        .unwrap()
        .renew(&store, &echo, None, false)
        .await
        .unwrap();
    again.stop().await;
}

/// The rotation loop renews at half the lifetime; while the CA is down it retries with
/// backoff and the certificate in hand stays in use; when the CA is back, renewal resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_the_certificate_while_the_ca_is_down_and_resumes() {
    use switchyard_dataplane_runtime::identity::{CaClient, CaTransport, Rotation, RotationPolicy};
    use switchyard_dataplane_runtime::tls::{IdentityStore, TrustBundle};

    let (cp, echo, token) = echo_mesh().await;
    let address = cp.xds();
    let bundle = cp.server.trust().authority().bundle().concat();
    let store = IdentityStore::new(TrustBundle::from_pem(&bundle).unwrap());
    let rotation = Rotation::new(
        store.clone(),
        CaClient::new(address, CaTransport::Plaintext, Some(token)).unwrap(),
        echo.clone(),
        RotationPolicy {
            ttl: Some(Duration::from_secs(4)),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
            ..Default::default()
        },
    );
    let mut certs = rotation.subscribe();
    let task = tokio::spawn(rotation.run());
    let first = tokio::time::timeout(Duration::from_secs(5), certs.wait_for(|c| c.is_some()))
        .await
        .unwrap()
        .unwrap()
        .clone()
        .unwrap();
    // renewed at about half of 4 s
    let second = tokio::time::timeout(
        Duration::from_secs(5),
        certs.wait_for(|c| {
            c.as_ref()
                .is_some_and(|c| c.info.serial != first.info.serial)
        }),
    )
    .await
    .unwrap()
    .unwrap()
    .clone()
    .unwrap();

    // the CA goes away: the next renewal fails, the certificate stays
    let ControlPlane {
        manifests,
        server,
        ca_dir,
    } = cp;
    server.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        store.info().unwrap().serial,
        second.info.serial,
        "kept while the CA is down"
    );

    // the CA is back on the same address: renewal resumes on its own
    let mut config = switchyard_xds_server::Config::for_tests(manifests.path(), ca_dir.path());
    config.xds_address = address;
    let again = switchyard_xds_server::Server::start(config).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        certs.wait_for(|c| {
            c.as_ref()
                .is_some_and(|c| c.info.serial != second.info.serial)
        }),
    )
    .await
    .expect("renewed after the CA came back")
    .unwrap();
    assert_ne!(store.info().unwrap().serial, second.info.serial);
    task.abort();
    again.stop().await;
}

/// A control plane with one pod (`default/echo-1`, sa `echo`), the pod's identity and a
/// bootstrap token for it.
async fn echo_mesh() -> (ControlPlane, switchyard_model::SpiffeId, String) {
    let cp = ControlPlane::start(&[(
        "mesh.yaml",
        vec![
            namespace("default", None),
            pod_on("default", "echo-1", "echo", "10.244.1.2", None),
        ],
    )])
    .await
    .unwrap();
    let echo = "spiffe://cluster.local/ns/default/sa/echo".parse().unwrap();
    let token = TokenAuthority::load_or_create(cp.ca_dir.path())
        .unwrap()
        .create("default", "echo", None, Duration::from_secs(600));
    (cp, echo, token)
}

fn refused(r: Result<Vec<String>, tonic::Status>, code: Code, needle: &str) {
    let s = r.expect_err(needle);
    assert_eq!(s.code(), code, "{needle}: {s:?}");
    assert!(s.message().contains(needle), "{needle}: {}", s.message());
}

/// Kubernetes service-account tokens are checked with TokenReview (against the fake API
/// server: no real one runs here), with audience `switchyard-ca`; the node of a bound token
/// lets a node agent ask for pods on that node only. Bootstrap tokens keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_tokens_are_checked_with_token_review() {
    use switchyard_test_support::fake_kube::{FakeKubeApi, KnownToken};
    let api = FakeKubeApi::start().await.unwrap();
    let known = |ns: &str, sa: &str, node: Option<&str>, aud: &str| KnownToken {
        namespace: ns.into(),
        service_account: sa.into(),
        node: node.map(Into::into),
        audiences: vec![aud.into()],
    };
    // JWT-shaped tokens (three segments); the fake knows them
    api.add_token(
        "k8s.echo.1",
        known("default", "echo", Some("node-1"), "switchyard-ca"),
    );
    api.add_token(
        "k8s.ztunnel.1",
        known(
            "switchyard-system",
            "ztunnel",
            Some("node-1"),
            "switchyard-ca",
        ),
    );
    api.add_token(
        "k8s.echo.kube",
        known("default", "echo", None, "kubernetes"),
    );
    let url = api.url();
    let cp = ControlPlane::start_with(
        &[(
            "mesh.yaml",
            vec![
                namespace("default", None),
                node("node-1", "10.255.0.1", "a"),
                node("node-2", "10.255.0.2", "b"),
                pod_on("default", "echo-1", "echo", "10.244.1.2", Some("node-1")),
                pod_on("default", "web-1", "web", "10.244.2.2", Some("node-2")),
            ],
        )],
        |c| c.kube_api = url,
    )
    .await
    .unwrap();
    let echo_csr = || csr(vec![spiffe("default", "echo")], false);

    ask(&cp, Some("k8s.echo.1"), echo_csr(), "").await.unwrap();
    refused(
        ask(
            &cp,
            Some("k8s.echo.1"),
            csr(vec![spiffe("default", "web")], false),
            "",
        )
        .await,
        Code::PermissionDenied,
        "may only ask for its own identity",
    );
    ask(
        &cp,
        Some("k8s.ztunnel.1"),
        echo_csr(),
        "spiffe://cluster.local/ns/default/sa/echo",
    )
    .await
    .unwrap();
    refused(
        ask(
            &cp,
            Some("k8s.ztunnel.1"),
            csr(vec![spiffe("default", "web")], false),
            "spiffe://cluster.local/ns/default/sa/web",
        )
        .await,
        Code::PermissionDenied,
        "no pod with that service account runs on node-1",
    );
    refused(
        ask(&cp, Some("k8s.unknown.token"), echo_csr(), "").await,
        Code::Unauthenticated,
        "invalid bearer token",
    );
    refused(
        ask(&cp, Some("k8s.echo.kube"), echo_csr(), "").await,
        Code::Unauthenticated,
        "is invalid for the target audiences",
    );
    assert!(api.reviews() >= 6, "every JWT went to TokenReview");
    // bootstrap tokens still work next to it
    let bootstrap = TokenAuthority::load_or_create(cp.ca_dir.path())
        .unwrap()
        .create("default", "echo", None, Duration::from_secs(60));
    ask(&cp, Some(&bootstrap), echo_csr(), "").await.unwrap();

    // without a Kubernetes API configured, a JWT is refused with the reason
    let plain = ControlPlane::start(&[("mesh.yaml", vec![namespace("default", None)])])
        .await
        .unwrap();
    refused(
        ask(&plain, Some("k8s.echo.1"), echo_csr(), "").await,
        Code::Unauthenticated,
        "no Kubernetes API configured",
    );
}
