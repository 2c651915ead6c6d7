//! Test certificate authority shared by this crate's unit tests (TLS, HBONE): a real
//! `switchyard_ca` authority with its root in a temporary directory, issuing workload
//! certificates through the same CSR path the control plane uses.

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use switchyard_ca::{Authority, AuthorityConfig, Issued, check_csr, load_or_create_root};
use switchyard_model::SpiffeId;
use tempfile::TempDir;

use crate::tls::{IdentityStore, TrustBundle};

/// Trust domain of every identity the fixture issues.
pub(crate) const TD: &str = "cluster.local";

/// `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
pub(crate) fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TD, ns, sa)
}

/// A CA with its root in a temporary directory.
pub(crate) struct Ca {
    dir: TempDir,
    authority: Authority,
}

impl Ca {
    /// A CA with a freshly generated root.
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let authority =
            load_or_create_root(dir.path(), AuthorityConfig::default()).expect("test CA root");
        Ca { dir, authority }
    }

    /// A CA signing with `authority` (for example an intermediate built by a test).
    pub(crate) fn with_authority(authority: Authority) -> Self {
        Ca {
            dir: tempfile::tempdir().expect("temporary directory"),
            authority,
        }
    }

    /// PEM of the root private key, for tests that build intermediates under it.
    pub(crate) fn root_key_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(switchyard_ca::ROOT_KEY_FILE))
            .expect("root key written by load_or_create_root")
    }

    /// The trust bundle as PEM.
    pub(crate) fn root_pem(&self) -> String {
        self.authority.bundle().concat()
    }

    /// The trust bundle.
    pub(crate) fn bundle(&self) -> TrustBundle {
        TrustBundle::from_pem(&self.root_pem()).expect("test CA bundle parses")
    }

    /// Issues a certificate for `who`; returns it with its key PEM.
    pub(crate) fn issue(&self, who: &SpiffeId) -> (Issued, String) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            who.to_string()
                .try_into()
                .expect("spiffe id is an IA5 string"),
        )];
        let csr = params
            .serialize_request(&key)
            .and_then(|r| r.pem())
            .expect("CSR");
        let checked = check_csr(&csr, TD).expect("CSR accepted");
        let issued = self.authority.issue(&checked, who, None).expect("issued");
        (issued, key.serialize_pem())
    }

    /// Issues a certificate for `who` and installs it in `store`; returns its serial.
    pub(crate) fn rotate(&self, store: &IdentityStore, who: &SpiffeId) -> String {
        let (issued, key) = self.issue(who);
        store
            .set_certificate(&issued.chain, &key)
            .expect("issued certificate installs")
            .serial
    }

    /// A store trusting this CA, holding a certificate for `who` issued by `issuer`.
    pub(crate) fn store_with(&self, issuer: &Ca, who: &SpiffeId) -> IdentityStore {
        let store = IdentityStore::new(self.bundle());
        issuer.rotate(&store, who);
        store
    }

    /// A store trusting this CA, holding a certificate for `who` issued by it.
    pub(crate) fn store(&self, who: &SpiffeId) -> IdentityStore {
        self.store_with(self, who)
    }
}
