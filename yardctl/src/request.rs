//! `yardctl cert request`: the key is generated here, a CSR goes to the control plane's
//! certificate service exactly as a dataplane sends it (the runtime's [`CaClient`]), and the
//! key, chain and root are written for a process that reads certificates from files.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use switchyard_dataplane_runtime::identity::{
    CaClient, CaTransport, IdentityError, control_plane_identity, generate_csr,
};
use switchyard_dataplane_runtime::tls::{CertInfo, IdentityStore, TrustBundle};
use switchyard_model::SpiffeId;

use crate::inspect::rfc3339;

/// The private key.
pub const KEY_FILE: &str = "key.pem";
/// The chain, leaf first.
pub const CHAIN_FILE: &str = "cert-chain.pem";
/// The root the chain ends in.
pub const ROOT_FILE: &str = "root-cert.pem";

/// What to ask for and where to put it.
#[derive(Debug)]
pub struct Request {
    /// `host:port` of the certificate service.
    pub ca_address: String,
    /// Root(s) to verify the control plane with; `None`: plaintext.
    pub ca_root_file: Option<PathBuf>,
    /// Bootstrap token.
    pub token: String,
    /// Identity asked for.
    pub identity: SpiffeId,
    /// Lifetime asked for (`None`: the CA's default).
    pub ttl: Option<Duration>,
    /// Ask on the identity's behalf (node agents).
    pub impersonate: bool,
    /// Where the files go.
    pub out_dir: PathBuf,
}

/// What was issued and written.
#[derive(Debug)]
pub struct Outcome {
    /// Facts of the leaf.
    pub info: CertInfo,
    /// Certificates in the chain.
    pub chain_len: usize,
    /// Files written: key, chain, root.
    pub files: [PathBuf; 3],
}

async fn resolve(address: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(address)
        .await
        .with_context(|| format!("cannot resolve the CA address {address:?} (expected HOST:PORT)"))?
        .next()
        .with_context(|| format!("CA address {address:?} resolves to no address"))
}

/// Sends the CSR and writes the files.
pub async fn run(req: Request) -> anyhow::Result<Outcome> {
    let trust_domain = req.identity.trust_domain.clone();
    let root_bundle = match &req.ca_root_file {
        Some(path) => {
            let text = fs::read_to_string(path)
                .with_context(|| format!("reading the CA root file {}", path.display()))?;
            Some(
                TrustBundle::from_pem(&text)
                    .with_context(|| format!("CA root file {}", path.display()))?,
            )
        }
        None => None,
    };
    let transport = match &root_bundle {
        Some(bundle) => CaTransport::Tls {
            server: control_plane_identity(&trust_domain),
            store: IdentityStore::new(bundle.clone()),
        },
        None => CaTransport::Plaintext,
    };
    let address = resolve(&req.ca_address).await?;
    let mut client = CaClient::new(address, transport, Some(req.token))?;
    let (csr, key) = generate_csr(&req.identity)?;
    tracing::debug!(identity = %req.identity, %address, "sending CSR");
    let tls = root_bundle.is_some();
    let chain = client
        .create(csr, req.ttl, req.impersonate.then_some(&req.identity))
        .await
        .map_err(|e| unreachable_ca(e, &req.ca_address, address, tls, &trust_domain))?;

    // Check what came back as a dataplane would before installing it: the one SPIFFE ID is
    // the one asked for and the key matches the leaf. The bundle is the root file when given
    // (a chain that does not verify against it is logged), else the chain's own root.
    let root_pem = chain
        .last()
        .context("the CA answered with an empty certificate chain")?
        .clone();
    let bundle = match root_bundle {
        Some(b) => b,
        None => TrustBundle::from_pem(&root_pem)
            .context("the last certificate of the CA's chain is not a usable root")?,
    };
    let info = IdentityStore::new(bundle)
        .set_certificate(&chain, &key)
        .context("the CA answered with an unusable certificate")?;
    anyhow::ensure!(
        info.id == req.identity,
        "the CA issued a certificate for {}, expected {}",
        info.id,
        req.identity
    );

    fs::create_dir_all(&req.out_dir)
        .with_context(|| format!("creating {}", req.out_dir.display()))?;
    let files = [
        req.out_dir.join(KEY_FILE),
        req.out_dir.join(CHAIN_FILE),
        req.out_dir.join(ROOT_FILE),
    ];
    write_replacing(&files[0], &key, 0o600)?;
    write_replacing(&files[1], &joined(&chain), 0o644)?;
    write_replacing(&files[2], &joined(&[root_pem]), 0o644)?;
    Ok(Outcome {
        info,
        chain_len: chain.len(),
        files,
    })
}

/// Some gRPC statuses are not the CA refusing (it answers with explicit codes): `Unavailable`
/// and `Unknown` come from the transport (nothing answered, the TLS session failed), an HTTP/2
/// protocol error from plaintext sent to the TLS port.
fn unreachable_ca(
    e: IdentityError,
    address: &str,
    resolved: SocketAddr,
    tls: bool,
    td: &str,
) -> anyhow::Error {
    match e {
        IdentityError::Refused { code, message }
            if matches!(code, tonic::Code::Unavailable | tonic::Code::Unknown)
                || (code == tonic::Code::Internal && message.starts_with("h2 protocol error")) =>
        {
            let hint = if tls {
                format!(
                    "is the control plane's TLS port (15012) there, and does its certificate for {} chain to the --ca-root-file?",
                    control_plane_identity(td)
                )
            } else {
                "is the control plane's plaintext port (15010) there? the TLS port (15012) needs --ca-root-file".into()
            };
            // The client names the address itself; once is enough.
            let suffix = format!(" (CA at {resolved})");
            let message = message.strip_suffix(&suffix).unwrap_or(&message);
            anyhow::anyhow!("cannot talk to the CA at {address}: {message} ({hint})")
        }
        other => other.into(),
    }
}

/// PEM blocks one after another, each ending in a newline.
fn joined(blocks: &[String]) -> String {
    let mut out = String::new();
    for b in blocks {
        out.push_str(b);
        if !b.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// Writes `path` through a new file with `mode` renamed over it: readers see the old file or
/// the new one, and a key file never exists with wider permissions, even for a moment.
fn write_replacing(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // A leftover of an interrupted run with the same pid: remove it (a symlink is removed,
    // not followed).
    let _ = fs::remove_file(&tmp);
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have taken bits away from a 0644 file; never adds any to 0600.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

impl Outcome {
    /// The report for people.
    pub fn render_text(&self) -> String {
        let [key, chain, root] = &self.files;
        format!(
            "identity:   {}\nserial:     {}\nnot before: {}\nnot after:  {}\nwrote:      {} (mode 0600)\n            {} ({} certificates, leaf first)\n            {}\n",
            self.info.id,
            self.info.serial,
            rfc3339(self.info.not_before),
            rfc3339(self.info.not_after),
            key.display(),
            chain.display(),
            self.chain_len,
            root.display(),
        )
    }

    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let [key, chain, root] = &self.files;
        serde_json::json!({
            "identity": self.info.id.to_string(),
            "serial": self.info.serial,
            "not_before": rfc3339(self.info.not_before),
            "not_after": rfc3339(self.info.not_after),
            "files": {
                "key": key.display().to_string(),
                "cert_chain": chain.display().to_string(),
                "root_cert": root.display().to_string(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn replacing_a_file_gives_it_the_new_mode_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_replacing(&path, "new", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // nothing left behind
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn pem_blocks_are_joined_with_newlines() {
        assert_eq!(joined(&["a".into(), "b\n".into()]), "a\nb\n");
    }
}
