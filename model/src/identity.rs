//! SPIFFE identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

/// A workload identity in Switchyard's SPIFFE form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// Trust domain, e.g. `cluster.local`.
    pub trust_domain: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Kubernetes service account.
    pub service_account: String,
}

/// Why a string is not a Switchyard SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Not `spiffe://...`.
    #[error("{0:?} is not a spiffe id: it must start with spiffe://")]
    Scheme(String),
    /// Path is not `/ns/<ns>/sa/<sa>`.
    #[error(
        "{0:?} is not a workload spiffe id: the path must be /ns/<namespace>/sa/<service-account>"
    )]
    Path(String),
    /// A segment is empty or has characters SPIFFE forbids.
    #[error("{id:?} has an invalid {what}: {reason}")]
    Segment {
        /// The whole ID.
        id: String,
        /// Which part.
        what: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

impl SpiffeId {
    /// Builds an identity; the caller is responsible for valid segments (see [`FromStr`]).
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        SpiffeId {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

fn check_segment(id: &str, what: &'static str, seg: &str) -> Result<(), IdentityError> {
    let err = |reason| IdentityError::Segment {
        id: id.to_string(),
        what,
        reason,
    };
    if seg.is_empty() {
        return Err(err("it is empty"));
    }
    if seg == "." || seg == ".." {
        return Err(err("it is a dot segment"));
    }
    if !seg
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(err("only letters, digits, '-', '.' and '_' are allowed"));
    }
    Ok(())
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| IdentityError::Scheme(s.to_string()))?;
        let (td, path) = rest
            .split_once('/')
            .ok_or_else(|| IdentityError::Path(s.to_string()))?;
        let td_ok = !td.is_empty()
            && td.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_')
            });
        if !td_ok {
            return Err(IdentityError::Segment {
                id: s.to_string(),
                what: "trust domain",
                reason: "only lowercase letters, digits, '-', '.' and '_' are allowed",
            });
        }
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["ns", ns, "sa", sa] => {
                check_segment(s, "namespace", ns)?;
                check_segment(s, "service account", sa)?;
                Ok(SpiffeId::new(td, *ns, *sa))
            }
            _ => Err(IdentityError::Path(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/echo".parse().unwrap();
        assert_eq!(id, SpiffeId::new("cluster.local", "default", "echo"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/echo");
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in [
            "http://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://Cluster.Local/ns/a/sa/b",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/ns/../sa/b",
            "spiffe://cluster.local/ns/a b/sa/b",
            "spiffe:///ns/a/sa/b",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad} should be rejected");
        }
    }
}
