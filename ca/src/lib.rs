//! Switchyard's certificate authority: roots (generated and persisted, or an operator's
//! plug-in intermediate), CSR verification and policy, and signing of short-lived SPIFFE
//! leaf certificates.
//!
//! A CSR only proves possession of a key. Everything else in an issued certificate — the one
//! URI SAN, key usages, validity, basic constraints — comes from the identity the caller was
//! authorised for; nothing the CSR asks for is copied. Authentication and authorisation of
//! callers happen before [`Authority::issue`] and are not this crate's business; neither is
//! holding any workload's private key.

mod authority;
mod csr;
mod store;
pub mod token;

pub use authority::{Authority, AuthorityConfig, Issued};
pub use csr::{CheckedCsr, CsrError, MAX_CSR_BYTES, check_csr};
pub use store::{
    CaDirError, NEXT_ROOT_CERT_FILE, ROOT_CERT_FILE, ROOT_KEY_FILE, RootPhase, begin_root_rotation,
    load_or_create_root, load_plugin, promote_next_root, retire_roots, root_phase,
};

/// Errors while issuing (not the caller's fault).
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// rcgen refused the parameters or failed to sign.
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
}

#[cfg(test)]
mod tests;
