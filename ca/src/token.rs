//! Bootstrap tokens for the local cluster: the control plane vouches that the holder runs as
//! a service account (and, for node agents, on a node). Compact form
//! `<base64url claims JSON>.<base64url HMAC-SHA256>`, keyed by a secret kept next to the root
//! (`token-key`, mode 0600). In Kubernetes, projected service-account tokens checked with
//! TokenReview take this role.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::{Deserialize, Serialize};

/// File holding the token key in the CA directory.
pub const TOKEN_KEY_FILE: &str = "token-key";
/// Audience every token must name.
pub const AUDIENCE: &str = "switchyard-ca";

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Namespace.
    pub ns: String,
    /// Service account.
    pub sa: String,
    /// Node (node agents only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Audience.
    pub aud: String,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Expires at (seconds since the epoch).
    pub exp: u64,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `<claims>.<signature>` in base64url.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// Signature does not verify.
    #[error("token signature does not verify: it was not issued by this control plane")]
    Signature,
    /// Expired.
    #[error("token expired {0} s ago")]
    Expired(u64),
    /// Wrong audience.
    #[error("token audience is {0:?}, expected {AUDIENCE:?}")]
    Audience(String),
}

/// Why the token key cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[error("token key {path}: {source}")]
pub struct TokenKeyError {
    path: String,
    source: std::io::Error,
}

/// Signs and verifies tokens.
#[derive(Debug)]
pub struct TokenAuthority {
    key: hmac::Key,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenAuthority {
    /// A token authority with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        TokenAuthority {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// Loads the secret in `dir`, or creates a random one there (mode 0600).
    pub fn load_or_create(dir: &Path) -> Result<Self, TokenKeyError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(TOKEN_KEY_FILE);
        let err = |source| TokenKeyError {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(&path) {
            Ok(secret) => Ok(Self::new(&secret)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
                std::fs::create_dir_all(dir).map_err(err)?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(err)?;
                f.write_all(&secret).map_err(err)?;
                Ok(Self::new(&secret))
            }
            Err(e) => Err(err(e)),
        }
    }

    /// A token for `ns`/`sa` (on `node`), valid for `ttl`.
    pub fn create(&self, ns: &str, sa: &str, node: Option<&str>, ttl: Duration) -> String {
        let iat = now();
        self.sign(&Claims {
            ns: ns.into(),
            sa: sa.into(),
            node: node.map(Into::into),
            aud: AUDIENCE.into(),
            iat,
            exp: iat + ttl.as_secs(),
        })
    }

    /// Signs arbitrary claims (tests use it to make bad tokens).
    pub fn sign(&self, claims: &Claims) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let tag = hmac::sign(&self.key, body.as_bytes());
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let (body, sig) = token
            .split_once('.')
            .ok_or(TokenError::Malformed("expected <claims>.<signature>"))?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        hmac::verify(&self.key, body.as_bytes(), &sig).map_err(|_| TokenError::Signature)?;
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed("claims are not base64url"))?;
        let claims: Claims = serde_json::from_slice(&raw)
            .map_err(|_| TokenError::Malformed("claims are not JSON"))?;
        if claims.aud != AUDIENCE {
            return Err(TokenError::Audience(claims.aud));
        }
        let t = now();
        if claims.exp <= t {
            return Err(TokenError::Expired(t - claims.exp));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_bad_ones_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let ta = TokenAuthority::load_or_create(dir.path()).unwrap();
        let t = ta.create("default", "echo", None, Duration::from_secs(60));
        let c = ta.verify(&t).unwrap();
        assert_eq!(
            (c.ns.as_str(), c.sa.as_str(), c.node.clone()),
            ("default", "echo", None)
        );
        // same key after a restart
        let again = TokenAuthority::load_or_create(dir.path()).unwrap();
        assert!(again.verify(&t).is_ok());
        // another control plane's token
        let other = TokenAuthority::new(b"another secret");
        assert_eq!(other.verify(&t), Err(TokenError::Signature));
        // expired
        let mut claims = c.clone();
        claims.exp = now() - 10;
        assert!(matches!(
            ta.verify(&ta.sign(&claims)),
            Err(TokenError::Expired(_))
        ));
        // wrong audience
        let mut claims = c.clone();
        claims.aud = "kubernetes".into();
        assert_eq!(
            ta.verify(&ta.sign(&claims)),
            Err(TokenError::Audience("kubernetes".into()))
        );
        // garbage
        assert!(matches!(ta.verify("nope"), Err(TokenError::Malformed(_))));
        // a tampered body breaks the signature
        let (body, sig) = t.split_once('.').unwrap();
        let mut b = body.to_string();
        b.replace_range(0..1, if &body[0..1] == "e" { "f" } else { "e" });
        assert_eq!(ta.verify(&format!("{b}.{sig}")), Err(TokenError::Signature));
    }
}
