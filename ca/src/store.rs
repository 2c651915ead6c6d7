//! Where roots live: a directory with the self-signed root generated on first start (key file
//! mode 0600), or an operator's plug-in intermediate.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;
use tracing::info;

use crate::authority::{Authority, AuthorityConfig};

/// Root certificate file in the CA directory.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// Root key file in the CA directory (mode 0600).
pub const ROOT_KEY_FILE: &str = "root-key.pem";
/// Plug-in CA: our signing certificate.
pub const PLUGIN_CERT_FILE: &str = "ca-cert.pem";
/// Plug-in CA: its key.
pub const PLUGIN_KEY_FILE: &str = "ca-key.pem";
/// Plug-in CA: the chain above `ca-cert.pem`, ending with the root.
pub const PLUGIN_CHAIN_FILE: &str = "cert-chain.pem";
/// Root rotation: the root being introduced.
pub const NEXT_ROOT_CERT_FILE: &str = "next-root-cert.pem";
/// Root rotation: its key (mode 0600).
pub const NEXT_ROOT_KEY_FILE: &str = "next-root-key.pem";
/// Root rotation: old roots still trusted, with when they leave the bundle.
pub const RETIRED_ROOTS_FILE: &str = "retired-roots.json";

/// Root lifetime.
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Why the CA directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaDirError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{path}: {message}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Only one of the root's two files exists.
    #[error(
        "{dir}: {present} exists but {missing} does not; restore it or remove both to make a new root"
    )]
    Partial {
        /// Directory.
        dir: PathBuf,
        /// File present.
        present: &'static str,
        /// File missing.
        missing: &'static str,
    },
    /// A root rotation step is not possible now.
    #[error("root rotation: {0}")]
    Rotation(String),
    /// Generating the root failed.
    #[error("generating the root: {0}")]
    Generate(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaDirError + '_ {
    move |source| CaDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read(path: &Path) -> Result<String, CaDirError> {
    fs::read_to_string(path).map_err(io(path))
}

fn write_private(path: &Path, text: &str) -> Result<(), CaDirError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))
}

/// PEM certificates in `text`, each re-encoded on its own.
fn certificates(path: &Path, text: &str) -> Result<Vec<String>, CaDirError> {
    let blocks = ::pem::parse_many(text).map_err(|e| CaDirError::Invalid {
        path: path.to_path_buf(),
        message: format!("not PEM: {e}"),
    })?;
    let certs: Vec<String> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| {
            ::pem::encode_config(
                &b,
                ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
            )
        })
        .collect();
    if certs.is_empty() {
        return Err(CaDirError::Invalid {
            path: path.to_path_buf(),
            message: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<KeyPair, CaDirError> {
    KeyPair::from_pem(&read(path)?).map_err(|e| CaDirError::Invalid {
        path: path.to_path_buf(),
        message: format!("not a usable private key: {e}"),
    })
}

/// Generates a self-signed root (ECDSA P-256, 10 years): certificate PEM and key.
fn generate_root(config: &AuthorityConfig) -> Result<(String, KeyPair), CaDirError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, config.trust_domain.clone());
    // A distinct name per root: verifiers find issuers by name, and during a rotation two
    // roots are trusted at once.
    let mut tag = [0u8; 4];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut tag);
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    dn.push(
        DnType::CommonName,
        format!(
            "Switchyard root CA {} {tag}",
            OffsetDateTime::now_utc().date()
        ),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(60);
    params.not_after = now + ROOT_TTL;
    // rcgen derives the subject key identifier from the key, so two roots never share one.
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key))
}

/// A root that no longer signs but stays trusted until every leaf it signed has expired.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RetiredRoot {
    cert: String,
    /// Unix seconds after which it leaves the bundle.
    retire_at: i64,
}

fn read_retired(dir: &Path) -> Result<Vec<RetiredRoot>, CaDirError> {
    let path = dir.join(RETIRED_ROOTS_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&read(&path)?).map_err(|e| CaDirError::Invalid {
        path: path.clone(),
        message: format!("not a list of retired roots: {e}"),
    })
}

fn write_atomic(path: &Path, text: &str) -> Result<(), CaDirError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

fn write_retired(dir: &Path, retired: &[RetiredRoot]) -> Result<(), CaDirError> {
    let path = dir.join(RETIRED_ROOTS_FILE);
    if retired.is_empty() {
        return match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        };
    }
    let text = serde_json::to_string_pretty(retired).map_err(|e| CaDirError::Invalid {
        path: path.clone(),
        message: e.to_string(),
    })?;
    write_atomic(&path, &text)
}

/// Where a root rotation stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum RootPhase {
    /// One root signs and is the whole bundle.
    Stable,
    /// A new root is in the bundle but does not sign yet: proxies are being given it.
    Introduced,
    /// The new root signs; older roots stay in the bundle until their leaves have expired.
    Retiring {
        /// Unix seconds when the last old root leaves the bundle.
        until: i64,
    },
}

/// The rotation phase of the root in `dir`.
pub fn root_phase(dir: &Path) -> Result<RootPhase, CaDirError> {
    if dir.join(NEXT_ROOT_CERT_FILE).exists() {
        return Ok(RootPhase::Introduced);
    }
    let retired = read_retired(dir)?;
    Ok(match retired.iter().map(|r| r.retire_at).max() {
        Some(until) => RootPhase::Retiring { until },
        None => RootPhase::Stable,
    })
}

/// Loads the root in `dir`, or generates one (ECDSA P-256, 10 years) and writes it there.
/// The bundle is the signing root, then a root being introduced, then retired roots whose
/// leaves may still be in use.
pub fn load_or_create_root(dir: &Path, config: AuthorityConfig) -> Result<Authority, CaDirError> {
    let cert_path = dir.join(ROOT_CERT_FILE);
    let key_path = dir.join(ROOT_KEY_FILE);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {}
        (true, false) => {
            return Err(CaDirError::Partial {
                dir: dir.to_path_buf(),
                present: ROOT_CERT_FILE,
                missing: ROOT_KEY_FILE,
            });
        }
        (false, true) => {
            return Err(CaDirError::Partial {
                dir: dir.to_path_buf(),
                present: ROOT_KEY_FILE,
                missing: ROOT_CERT_FILE,
            });
        }
        (false, false) => {
            fs::create_dir_all(dir).map_err(io(dir))?;
            let (cert, key) = generate_root(&config)?;
            write_private(&key_path, &key.serialize_pem())?;
            fs::write(&cert_path, &cert).map_err(io(&cert_path))?;
            info!(dir = %dir.display(), "generated a new CA root");
        }
    }
    let cert = certificates(&cert_path, &read(&cert_path)?)?.remove(0);
    let key = key(&key_path)?;
    let mut bundle = vec![cert.clone()];
    let next_path = dir.join(NEXT_ROOT_CERT_FILE);
    if next_path.exists() {
        bundle.push(certificates(&next_path, &read(&next_path)?)?.remove(0));
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    for r in read_retired(dir)? {
        if r.retire_at > now {
            bundle.push(r.cert);
        }
    }
    info!(dir = %dir.display(), roots = bundle.len(), "loaded CA root");
    Authority::new(&cert, key, Vec::new(), bundle, config).map_err(|e| CaDirError::Invalid {
        path: cert_path.clone(),
        message: format!("root certificate does not match its key or is not a CA: {e}"),
    })
}

/// Starts a root rotation: generates the next root and adds it to the bundle; the current
/// root keeps signing until [`promote_next_root`].
pub fn begin_root_rotation(dir: &Path, config: AuthorityConfig) -> Result<Authority, CaDirError> {
    if dir.join(PLUGIN_CERT_FILE).exists() {
        return Err(CaDirError::Rotation(
            "this CA uses an operator's intermediate (plug-in CA); rotate it by replacing ca-cert.pem, ca-key.pem and cert-chain.pem".into(),
        ));
    }
    if dir.join(NEXT_ROOT_CERT_FILE).exists() {
        return Err(CaDirError::Rotation(
            "a root rotation is already in progress: its new root is not signing yet".into(),
        ));
    }
    if !dir.join(ROOT_CERT_FILE).exists() {
        return Err(CaDirError::Rotation(format!(
            "{} has no root to rotate",
            dir.display()
        )));
    }
    let (cert, key) = generate_root(&config)?;
    let key_path = dir.join(NEXT_ROOT_KEY_FILE);
    if key_path.exists() {
        fs::remove_file(&key_path).map_err(io(&key_path))?;
    }
    write_private(&key_path, &key.serialize_pem())?;
    // The certificate is written last: its presence is what marks the phase.
    write_atomic(&dir.join(NEXT_ROOT_CERT_FILE), &cert)?;
    info!(dir = %dir.display(), "root rotation begun: new root added to the bundle");
    load_or_create_root(dir, config)
}

/// The new root starts signing; the old one stays in the bundle for the longest leaf
/// lifetime, so every certificate it signed still verifies until it expires.
pub fn promote_next_root(dir: &Path, config: AuthorityConfig) -> Result<Authority, CaDirError> {
    let next_cert = dir.join(NEXT_ROOT_CERT_FILE);
    if !next_cert.exists() {
        return Err(CaDirError::Rotation("no root rotation in progress".into()));
    }
    let old = certificates(&dir.join(ROOT_CERT_FILE), &read(&dir.join(ROOT_CERT_FILE))?)?.remove(0);
    let mut retired = read_retired(dir)?;
    // Leaves signed until now expire by now + max_ttl; one second for rounding.
    let leaf_life = config.max_ttl + Duration::from_secs(1);
    retired.push(RetiredRoot {
        cert: old,
        retire_at: (OffsetDateTime::now_utc() + leaf_life).unix_timestamp(),
    });
    write_retired(dir, &retired)?;
    let next_key = dir.join(NEXT_ROOT_KEY_FILE);
    let key_path = dir.join(ROOT_KEY_FILE);
    fs::rename(&next_key, &key_path).map_err(io(&key_path))?;
    let cert_path = dir.join(ROOT_CERT_FILE);
    fs::rename(&next_cert, &cert_path).map_err(io(&cert_path))?;
    info!(dir = %dir.display(), "new root promoted: it signs from now on");
    load_or_create_root(dir, config)
}

/// Drops retired roots whose leaves have all expired; `Some` with the new authority when the
/// bundle changed.
pub fn retire_roots(dir: &Path, config: AuthorityConfig) -> Result<Option<Authority>, CaDirError> {
    let retired = read_retired(dir)?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let keep: Vec<RetiredRoot> = retired
        .iter()
        .filter(|r| r.retire_at > now)
        .cloned()
        .collect();
    if keep.len() == retired.len() {
        return Ok(None);
    }
    write_retired(dir, &keep)?;
    info!(dir = %dir.display(), removed = retired.len() - keep.len(), "old roots left the bundle");
    load_or_create_root(dir, config).map(Some)
}

/// Loads an operator-supplied intermediate from `dir`: `ca-cert.pem`, `ca-key.pem` and
/// `cert-chain.pem` (the chain above it, ending with the root, which becomes the bundle).
pub fn load_plugin(dir: &Path, config: AuthorityConfig) -> Result<Authority, CaDirError> {
    let cert_path = dir.join(PLUGIN_CERT_FILE);
    let chain_path = dir.join(PLUGIN_CHAIN_FILE);
    let cert = certificates(&cert_path, &read(&cert_path)?)?.remove(0);
    let chain = certificates(&chain_path, &read(&chain_path)?)?;
    let key = key(&dir.join(PLUGIN_KEY_FILE))?;
    let root = chain.last().cloned().unwrap_or_else(|| cert.clone());
    Authority::new(&cert, key, chain, vec![root], config).map_err(|e| CaDirError::Invalid {
        path: cert_path,
        message: format!("certificate does not match its key or is not a CA: {e}"),
    })
}
