//! The CA at run time: the signing authority (swapped in place on root rotation), the trust
//! bundle the mesh carries to every proxy as SDS `ROOTCA`, and the root rotation driver.
//!
//! Root rotation, in three steps, each persisted in the CA directory so a restart resumes it:
//! 1. `rotate_root`: a new root joins the bundle; the old one keeps signing.
//! 2. Once every connected proxy that subscribes to `ROOTCA` has ACKed a bundle containing
//!    the new root, the new root starts signing. The bundle's order changes with it, which is
//!    a bundle change: dataplanes renew at once and get leaves from the new root.
//! 3. The old root leaves the bundle when the longest leaf it can have signed has expired.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use switchyard_ca::{Authority, AuthorityConfig, CaDirError, RootPhase};
use switchyard_protos::TypeUrl;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cache::{SnapshotCache, SyncState};
use crate::render::secret;

/// How often the rotation driver looks at ACKs and retirement times.
const DRIVE_INTERVAL: Duration = Duration::from_millis(250);

/// The CA's run-time state.
#[derive(Debug)]
pub struct Trust {
    dir: PathBuf,
    config: AuthorityConfig,
    plugin: bool,
    authority: ArcSwap<Authority>,
    bundle: watch::Sender<Arc<[String]>>,
    /// Serialises rotation steps (they move files).
    steps: Mutex<()>,
}

/// One root of the bundle, for operators.
#[derive(Debug, Clone, Serialize)]
pub struct RootInfo {
    /// SHA-256 of the DER, hex.
    pub sha256: String,
    /// Whether it signs new leaves.
    pub signing: bool,
    /// End of validity (RFC 3339).
    pub not_after: String,
}

/// `GET /debug/ca`.
#[derive(Debug, Clone, Serialize)]
pub struct TrustStatus {
    /// Rotation phase.
    pub rotation: RootPhase,
    /// Roots in the bundle, in the order proxies get them.
    pub roots: Vec<RootInfo>,
    /// Proxies that have not ACKed the current bundle yet.
    pub waiting_for: Vec<String>,
}

fn root_info(pem_text: &str, signing: bool) -> RootInfo {
    let der = ::pem::parse(pem_text)
        .map(|p| p.contents().to_vec())
        .unwrap_or_default();
    let sha256 = ring::digest::digest(&ring::digest::SHA256, &der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let not_after = x509_parser::parse_x509_certificate(&der)
        .ok()
        .and_then(|(_, c)| {
            c.validity()
                .not_after
                .to_datetime()
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    RootInfo {
        sha256,
        signing,
        not_after,
    }
}

impl Trust {
    /// Loads the CA in `dir`: an operator's intermediate when `ca-cert.pem` is there,
    /// otherwise our own root (generated on first start).
    pub fn load(dir: PathBuf, config: AuthorityConfig) -> Result<Self, CaDirError> {
        let plugin = dir.join("ca-cert.pem").exists();
        let authority = if plugin {
            switchyard_ca::load_plugin(&dir, config.clone())?
        } else {
            switchyard_ca::load_or_create_root(&dir, config.clone())?
        };
        let bundle: Arc<[String]> = Arc::from(authority.bundle().to_vec());
        Ok(Trust {
            dir,
            config,
            plugin,
            authority: ArcSwap::from_pointee(authority),
            bundle: watch::channel(bundle).0,
            steps: Mutex::new(()),
        })
    }

    /// The signer now.
    pub fn authority(&self) -> Arc<Authority> {
        self.authority.load_full()
    }

    /// The trust bundle, now and as it changes.
    pub fn bundle(&self) -> watch::Receiver<Arc<[String]>> {
        self.bundle.subscribe()
    }

    fn install(&self, authority: Authority) {
        let bundle: Arc<[String]> = Arc::from(authority.bundle().to_vec());
        self.authority.store(Arc::new(authority));
        self.bundle.send_if_modified(|b| {
            if *b == bundle {
                false
            } else {
                *b = bundle;
                true
            }
        });
    }

    fn phase(&self) -> RootPhase {
        if self.plugin {
            return RootPhase::Stable;
        }
        switchyard_ca::root_phase(&self.dir).unwrap_or(RootPhase::Stable)
    }

    /// Starts a root rotation (step 1).
    pub fn rotate_root(&self) -> Result<(), CaDirError> {
        let _guard = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        if self.plugin {
            return Err(CaDirError::Rotation(
                "this CA uses an operator's intermediate (plug-in CA); rotate it by replacing ca-cert.pem, ca-key.pem and cert-chain.pem".into(),
            ));
        }
        let authority = switchyard_ca::begin_root_rotation(&self.dir, self.config.clone())?;
        self.install(authority);
        Ok(())
    }

    /// Node ids of proxies that subscribe to `ROOTCA` and have not ACKed the current bundle.
    pub fn waiting_for(&self, cache: &SnapshotCache) -> Vec<String> {
        let expected = secret::root_ca(&self.bundle.borrow()).map(|r| r.version);
        let mut waiting = Vec::new();
        for conn in cache.connections() {
            let status = conn.status();
            let Some(st) = status.get(&TypeUrl::Secret) else {
                continue;
            };
            let wants = st
                .subscription
                .iter()
                .any(|n| n == secret::ROOT_CA || n == "*");
            if !wants {
                continue;
            }
            let snap = conn.snapshot();
            let Some(ts) = snap.get(TypeUrl::Secret) else {
                waiting.push(conn.proxy.node_id.clone());
                continue;
            };
            let has_bundle = ts.get(secret::ROOT_CA).map(|r| r.version) == expected;
            let acked = st.state() == SyncState::Synced
                && st.acked_version.as_deref()
                    == Some(switchyard_model::hash::version_string(ts.version()).as_str());
            if !(has_bundle && acked) {
                waiting.push(conn.proxy.node_id.clone());
            }
        }
        waiting.sort();
        waiting
    }

    /// Operator view.
    pub fn status(&self, cache: &SnapshotCache) -> TrustStatus {
        let authority = self.authority();
        let signing_root = authority.chain_root();
        TrustStatus {
            rotation: self.phase(),
            roots: authority
                .bundle()
                .iter()
                .map(|r| root_info(r, Some(r.as_str()) == signing_root))
                .collect(),
            waiting_for: self.waiting_for(cache),
        }
    }

    /// One look at the rotation: promote when every proxy has the new bundle, retire old
    /// roots whose leaves have expired.
    pub fn step(&self, cache: &SnapshotCache) {
        let _guard = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        let result = match self.phase() {
            RootPhase::Stable => return,
            RootPhase::Introduced => {
                let waiting = self.waiting_for(cache);
                if !waiting.is_empty() {
                    return;
                }
                info!("every proxy has ACKed the bundle with the new root; promoting it");
                switchyard_ca::promote_next_root(&self.dir, self.config.clone()).map(Some)
            }
            RootPhase::Retiring { .. } => {
                switchyard_ca::retire_roots(&self.dir, self.config.clone())
            }
        };
        match result {
            Ok(Some(a)) => self.install(a),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "root rotation step failed; retrying"),
        }
    }

    /// Runs [`Trust::step`] until shutdown.
    pub async fn drive(self: Arc<Self>, cache: Arc<SnapshotCache>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(DRIVE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.step(&cache),
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
