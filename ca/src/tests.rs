use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, SanType,
};
use switchyard_model::SpiffeId;
use x509_parser::prelude::*;

use super::*;

const TD: &str = "cluster.local";

fn config() -> AuthorityConfig {
    AuthorityConfig {
        trust_domain: TD.into(),
        default_ttl: Duration::from_secs(3600),
        max_ttl: Duration::from_secs(7200),
    }
}

fn csr_with(sans: Vec<SanType>, alg: &'static rcgen::SignatureAlgorithm, ca: bool) -> String {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = sans;
    if ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    p.serialize_request(&key).unwrap().pem().unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

fn good_csr() -> String {
    csr_with(
        vec![uri("spiffe://cluster.local/ns/default/sa/echo")],
        &PKCS_ECDSA_P256_SHA256,
        false,
    )
}

fn der_of(pem_text: &str) -> Vec<u8> {
    ::pem::parse(pem_text).unwrap().contents().to_vec()
}

#[test]
fn issued_leaf_carries_only_what_the_ca_decides() {
    let dir = tempfile::tempdir().unwrap();
    let ca = load_or_create_root(dir.path(), config()).unwrap();
    // the CSR asks for extras: key cert sign usage; they must not be copied
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![uri("spiffe://cluster.local/ns/default/sa/echo")];
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "admin");
    p.distinguished_name = dn;
    let pem = p.serialize_request(&key).unwrap().pem().unwrap();
    let checked = check_csr(&pem, TD).unwrap();
    let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/echo".parse().unwrap();
    let issued = ca
        .issue(&checked, &id, Some(Duration::from_secs(999_999)))
        .unwrap();
    assert_eq!(issued.chain.len(), 2, "leaf + root");
    let leaf_der = der_of(&issued.chain[0]);
    let root_der = der_of(&issued.chain[1]);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    leaf.verify_signature(Some(root.public_key())).unwrap();
    let sans = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(sans.value.general_names.len(), 1);
    assert!(matches!(sans.value.general_names[0], GeneralName::URI(u) if u == id.to_string()));
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!leaf.is_ca());
    assert!(
        leaf.subject().iter_common_name().next().is_none(),
        "subject not copied"
    );
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!(
        lifetime <= 7200 + 60,
        "capped at max ttl (+ backdating): {lifetime}"
    );
    assert!(
        leaf.get_extension_unique(&oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)
            .unwrap()
            .is_some()
    );
    assert!(
        leaf.get_extension_unique(&oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
            .unwrap()
            .is_some()
    );
    assert_eq!(leaf.raw_serial().len(), 16);
    // default lifetime when none is asked for
    let issued = ca.issue(&checked, &id, None).unwrap();
    let leaf_der = der_of(&issued.chain[0]);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!((3600..=3660).contains(&lifetime), "{lifetime}");
}

#[test]
fn bad_csrs_are_refused_with_a_reason() {
    type Case = (&'static str, String, fn(&CsrError) -> bool);
    let cases: Vec<Case> = vec![
        ("not pem", "hello".into(), |e| {
            matches!(e, CsrError::NotPem(_))
        }),
        ("1 MB of garbage", "x".repeat(1 << 20), |e| {
            matches!(e, CsrError::TooLarge(_))
        }),
        (
            "two SANs",
            csr_with(
                vec![
                    uri("spiffe://cluster.local/ns/a/sa/b"),
                    uri("spiffe://cluster.local/ns/a/sa/c"),
                ],
                &PKCS_ECDSA_P256_SHA256,
                false,
            ),
            |e| matches!(e, CsrError::Sans(s) if s == "URI, URI"),
        ),
        (
            "only a DNS SAN",
            csr_with(
                vec![SanType::DnsName("echo.default".try_into().unwrap())],
                &PKCS_ECDSA_P256_SHA256,
                false,
            ),
            |e| matches!(e, CsrError::Sans(s) if s == "DNS"),
        ),
        (
            "no SAN",
            csr_with(vec![], &PKCS_ECDSA_P256_SHA256, false),
            |e| matches!(e, CsrError::Sans(s) if s == "none"),
        ),
        (
            "CA:true",
            csr_with(
                vec![uri("spiffe://cluster.local/ns/a/sa/b")],
                &PKCS_ECDSA_P256_SHA256,
                true,
            ),
            |e| matches!(e, CsrError::CaRequested),
        ),
        (
            "other trust domain",
            csr_with(
                vec![uri("spiffe://evil.example/ns/a/sa/b")],
                &PKCS_ECDSA_P256_SHA256,
                false,
            ),
            |e| matches!(e, CsrError::Identity { .. }),
        ),
        (
            "not a workload id",
            csr_with(
                vec![uri("spiffe://cluster.local/admin")],
                &PKCS_ECDSA_P256_SHA256,
                false,
            ),
            |e| matches!(e, CsrError::Identity { .. }),
        ),
        (
            "P-384 key",
            csr_with(
                vec![uri("spiffe://cluster.local/ns/a/sa/b")],
                &PKCS_ECDSA_P384_SHA384,
                false,
            ),
            |e| matches!(e, CsrError::Key(_)),
        ),
        (
            "truncated DER",
            "-----BEGIN CERTIFICATE REQUEST-----\nMIIBCgYJ\n-----END CERTIFICATE REQUEST-----\n"
                .into(),
            |e| matches!(e, CsrError::Malformed | CsrError::NotPem(_)),
        ),
        (
            "a certificate, not a request",
            {
                let k = KeyPair::generate().unwrap();
                CertificateParams::new(vec!["x".to_string()])
                    .unwrap()
                    .self_signed(&k)
                    .unwrap()
                    .pem()
            },
            |e| matches!(e, CsrError::NotPem(_)),
        ),
    ];
    for (what, pem, ok) in cases {
        let err = check_csr(&pem, TD).expect_err(what);
        assert!(ok(&err), "{what}: unexpected {err:?}");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn tampered_signature_is_refused() {
    let pem = good_csr();
    let mut der = der_of(&pem);
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der));
    let err = check_csr(&tampered, TD).unwrap_err();
    assert!(
        matches!(err, CsrError::BadSignature | CsrError::Malformed),
        "{err:?}"
    );
    // flipping a byte of the public key instead (inside the signed part) must fail the signature
    let mut der = der_of(&pem);
    let pos = der.len() / 2;
    der[pos] ^= 0x01;
    let tampered = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der));
    assert!(check_csr(&tampered, TD).is_err());
}

#[test]
fn root_persists_across_restarts_with_a_private_key_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let first = load_or_create_root(dir.path(), config()).unwrap();
    let mode = std::fs::metadata(dir.path().join(ROOT_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let checked = check_csr(&good_csr(), TD).unwrap();
    let id = checked.identity.clone();
    let issued = first.issue(&checked, &id, None).unwrap();
    drop(first);
    let second = load_or_create_root(dir.path(), config()).unwrap();
    assert_eq!(
        second.bundle(),
        &[issued.chain[1].clone()],
        "same root after restart"
    );
    let leaf_der = der_of(&issued.chain[0]);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let root_der = der_of(&second.bundle()[0]);
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    leaf.verify_signature(Some(root.public_key())).unwrap();
    // one file without the other is an error, not a silent new root
    std::fs::remove_file(dir.path().join(ROOT_KEY_FILE)).unwrap();
    let err = load_or_create_root(dir.path(), config()).unwrap_err();
    assert!(err.to_string().contains("root-key.pem"), "{err}");
}

#[test]
fn plugin_intermediate_issues_full_chains() {
    let root_dir = tempfile::tempdir().unwrap();
    let root_ca = load_or_create_root(root_dir.path(), config()).unwrap();
    let root_key =
        KeyPair::from_pem(&std::fs::read_to_string(root_dir.path().join(ROOT_KEY_FILE)).unwrap())
            .unwrap();
    let root_pem = root_ca.bundle()[0].clone();
    let root_issuer = rcgen::Issuer::from_ca_cert_pem(&root_pem, root_key).unwrap();
    let ikey = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ip = CertificateParams::default();
    ip.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ip.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "cluster intermediate");
    ip.distinguished_name = dn;
    let inter = ip.signed_by(&ikey, &root_issuer).unwrap();
    let plug = tempfile::tempdir().unwrap();
    std::fs::write(plug.path().join("ca-cert.pem"), inter.pem()).unwrap();
    std::fs::write(plug.path().join("ca-key.pem"), ikey.serialize_pem()).unwrap();
    std::fs::write(plug.path().join("cert-chain.pem"), &root_pem).unwrap();
    let ca = load_plugin(plug.path(), config()).unwrap();
    assert_eq!(ca.bundle(), std::slice::from_ref(&root_pem));
    let checked = check_csr(&good_csr(), TD).unwrap();
    let id = checked.identity.clone();
    let issued = ca.issue(&checked, &id, None).unwrap();
    assert_eq!(issued.chain.len(), 3, "leaf, intermediate, root");
    let leaf_der = der_of(&issued.chain[0]);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let inter_der = der_of(&issued.chain[1]);
    let (_, inter) = X509Certificate::from_der(&inter_der).unwrap();
    leaf.verify_signature(Some(inter.public_key())).unwrap();
    assert_eq!(issued.chain[2], root_pem);
}

#[test]
fn root_rotation_introduces_then_promotes_then_retires() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.max_ttl = Duration::from_secs(1);
    let first = load_or_create_root(dir.path(), cfg.clone()).unwrap();
    let old_root = first.bundle()[0].clone();
    assert_eq!(root_phase(dir.path()).unwrap(), RootPhase::Stable);

    // introduced: both roots trusted, the old one still signs
    let ca = begin_root_rotation(dir.path(), cfg.clone()).unwrap();
    assert_eq!(ca.bundle().len(), 2);
    assert_eq!(ca.bundle()[0], old_root);
    let new_root = ca.bundle()[1].clone();
    assert_ne!(new_root, old_root);
    assert_eq!(root_phase(dir.path()).unwrap(), RootPhase::Introduced);
    let checked = check_csr(&good_csr(), TD).unwrap();
    let id = checked.identity.clone();
    let leaf = ca.issue(&checked, &id, None).unwrap();
    assert_eq!(
        leaf.chain[1], old_root,
        "the old root signs until promotion"
    );
    let again = begin_root_rotation(dir.path(), cfg.clone()).unwrap_err();
    assert!(again.to_string().contains("already in progress"), "{again}");
    // a restart in this phase keeps it
    let reloaded = load_or_create_root(dir.path(), cfg.clone()).unwrap();
    assert_eq!(reloaded.bundle(), ca.bundle());

    // promoted: the new root signs, the old one stays trusted
    let ca = promote_next_root(dir.path(), cfg.clone()).unwrap();
    assert_eq!(ca.bundle(), &[new_root.clone(), old_root.clone()]);
    let leaf = ca.issue(&checked, &id, None).unwrap();
    assert_eq!(leaf.chain[1], new_root);
    let root_der = der_of(&new_root);
    let (_, root_cert) = X509Certificate::from_der(&root_der).unwrap();
    let leaf_der = der_of(&leaf.chain[0]);
    let (_, leaf_cert) = X509Certificate::from_der(&leaf_der).unwrap();
    leaf_cert
        .verify_signature(Some(root_cert.public_key()))
        .unwrap();
    assert!(matches!(
        root_phase(dir.path()).unwrap(),
        RootPhase::Retiring { .. }
    ));
    assert!(
        retire_roots(dir.path(), cfg.clone()).unwrap().is_none(),
        "too early"
    );

    // after the longest leaf lifetime the old root leaves the bundle
    std::thread::sleep(Duration::from_millis(2100));
    let ca = retire_roots(dir.path(), cfg.clone()).unwrap().unwrap();
    assert_eq!(ca.bundle(), std::slice::from_ref(&new_root));
    assert_eq!(root_phase(dir.path()).unwrap(), RootPhase::Stable);
    let err = promote_next_root(dir.path(), cfg).unwrap_err();
    assert!(err.to_string().contains("no root rotation"), "{err}");
}
