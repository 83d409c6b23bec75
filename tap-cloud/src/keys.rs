//! Per-sensor access keys: random, shown once when issued, stored only as a SHA-256 hash.

use sha2::Digest as _;

/// A new key: `dctap_` and 32 random bytes in hex.
pub fn generate() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
    Ok(format!("dctap_{}", hex(&bytes)))
}

/// What the store keeps of a key.
pub fn hash(key: &str) -> String {
    hex(&sha2::Sha256::digest(key.as_bytes()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_unique_and_only_their_hash_matches() {
        let (a, b) = (super::generate().unwrap(), super::generate().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 6 + 64);
        assert_eq!(super::hash(&a), super::hash(&a.clone()));
        assert_ne!(super::hash(&a), super::hash(&b));
        assert!(!super::hash(&a).contains(&a[6..]));
    }
}
