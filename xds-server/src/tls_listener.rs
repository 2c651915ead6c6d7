//! The TLS port (15012): the control plane presents a certificate its own CA issues to
//! `spiffe://<td>/ns/switchyard-system/sa/switchyard` (key generated here, renewed at half its
//! lifetime and whenever the trust bundle changes). Client certificates are optional; when
//! one is presented it must chain to the bundle, and the certificate service accepts it as
//! proof of identity for renewal.

use std::sync::Arc;
use std::time::Duration;

use switchyard_ca::check_csr;
use switchyard_dataplane_runtime::identity::{control_plane_identity, generate_csr};
use switchyard_dataplane_runtime::tls::{CertInfo, IdentityStore, TrustBundle, server_config};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::trust::Trust;

/// Longest TLS handshake accepted.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the control plane's own certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum OwnCertError {
    /// Key or CSR.
    #[error("control plane certificate: {0}")]
    Csr(String),
    /// Signing.
    #[error("control plane certificate: {0}")]
    Issue(String),
    /// Installing.
    #[error("control plane certificate: {0}")]
    Install(#[from] switchyard_dataplane_runtime::tls::TlsError),
}

fn bundle_of(pems: &[String]) -> Result<TrustBundle, OwnCertError> {
    Ok(TrustBundle::from_pem(&pems.concat())?)
}

/// Issues the control plane's own certificate into `store`.
pub fn issue_own(trust: &Trust, store: &IdentityStore) -> Result<CertInfo, OwnCertError> {
    let authority = trust.authority();
    let id = control_plane_identity(&authority.config().trust_domain);
    let (csr, key) = generate_csr(&id).map_err(|e| OwnCertError::Csr(e.to_string()))?;
    let checked =
        check_csr(&csr, &id.trust_domain).map_err(|e| OwnCertError::Csr(e.to_string()))?;
    let issued = authority
        .issue(&checked, &id, None)
        .map_err(|e| OwnCertError::Issue(e.to_string()))?;
    store.set_bundle(bundle_of(authority.bundle())?);
    Ok(store.set_certificate(&issued.chain, &key)?)
}

/// A store holding the control plane's certificate, issued now.
pub fn own_identity(trust: &Trust) -> Result<IdentityStore, OwnCertError> {
    let store = IdentityStore::new(bundle_of(trust.authority().bundle())?);
    issue_own(trust, &store)?;
    Ok(store)
}

/// Renews the control plane's certificate at half its lifetime and on bundle changes.
pub async fn keep_fresh(trust: Arc<Trust>, store: IdentityStore, shutdown: CancellationToken) {
    let mut bundles = trust.bundle();
    bundles.mark_unchanged();
    loop {
        let wait = store
            .info()
            .map(|i| {
                let left = i.not_after - time::OffsetDateTime::now_utc();
                Duration::try_from(left / 2).unwrap_or_default()
            })
            .unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = bundles.changed() => if changed.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
        bundles.mark_unchanged();
        match issue_own(&trust, &store) {
            Ok(info) => info!(serial = %info.serial, "control plane certificate renewed"),
            Err(e) => {
                warn!(error = %e, "control plane certificate not renewed; retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

/// Accepted TLS connections from `listener`, handshaken concurrently (a slow client never
/// holds up others); failed handshakes are logged and dropped.
pub fn incoming(
    listener: TcpListener,
    store: &IdentityStore,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let acceptor = TlsAcceptor::from(server_config(store, false, vec![b"h2".to_vec()]));
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.cancelled() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "tls accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "tls handshake failed"),
                    Err(_) => debug!(%peer, "tls handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
