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

/// Loads the root in `dir`, or generates one (ECDSA P-256, 10 years) and writes it there.
pub fn load_or_create_root(dir: &Path, config: AuthorityConfig) -> Result<Authority, CaDirError> {
    let cert_path = dir.join(ROOT_CERT_FILE);
    let key_path = dir.join(ROOT_KEY_FILE);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let cert = certificates(&cert_path, &read(&cert_path)?)?.remove(0);
            let key = key(&key_path)?;
            info!(dir = %dir.display(), "loaded CA root");
            Authority::new(&cert, key, Vec::new(), vec![cert.clone()], config).map_err(|e| {
                CaDirError::Invalid {
                    path: cert_path.clone(),
                    message: format!("root certificate does not match its key or is not a CA: {e}"),
                }
            })
        }
        (true, false) => Err(CaDirError::Partial {
            dir: dir.to_path_buf(),
            present: ROOT_CERT_FILE,
            missing: ROOT_KEY_FILE,
        }),
        (false, true) => Err(CaDirError::Partial {
            dir: dir.to_path_buf(),
            present: ROOT_KEY_FILE,
            missing: ROOT_CERT_FILE,
        }),
        (false, false) => {
            fs::create_dir_all(dir).map_err(io(dir))?;
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::OrganizationName, config.trust_domain.clone());
            dn.push(DnType::CommonName, "Switchyard root CA");
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
            let cert = params.self_signed(&key)?;
            write_private(&key_path, &key.serialize_pem())?;
            fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
            info!(dir = %dir.display(), "generated a new CA root");
            let pem = cert.pem();
            Ok(Authority::new(
                &pem,
                key,
                Vec::new(),
                vec![pem.clone()],
                config,
            )?)
        }
    }
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
