//! Content hashing: resource versions are hashes of their encoded bytes, so two servers (or one
//! server before and after a restart) give the same resource the same version.

/// 64-bit content hash (xxh3) of `bytes`.
pub fn content_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Content hash rendered the way versions are sent on the wire: 16 lowercase hex digits.
pub fn version_string(hash: u64) -> String {
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_content_only() {
        assert_eq!(content_hash(b"abc"), content_hash(&b"xabc"[1..]));
        assert_ne!(content_hash(b"abc"), content_hash(b"abd"));
        assert_eq!(version_string(0xab).len(), 16);
    }
}
