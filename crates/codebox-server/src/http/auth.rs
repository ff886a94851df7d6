//! API keys. Keys are kept only as sha256 digests; a presented key is hashed and compared with
//! every known digest in constant time, so a wrong key costs the same whether or not a similar
//! one exists.

use sha2::{Digest, Sha256};

use crate::sandbox::Owner;

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    digests: Vec<[u8; 32]>,
}

impl Keys {
    pub fn new(keys: &[String]) -> Keys {
        Keys {
            digests: keys.iter().map(|k| digest(k)).collect(),
        }
    }

    /// The owner for `presented` (the key's digest), if it is a known key.
    pub fn check(&self, presented: &str) -> Option<Owner> {
        let d = digest(presented);
        let mut found = None;
        for known in &self.digests {
            // Constant time per comparison, and every key is compared.
            let diff = known
                .iter()
                .zip(d.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(Owner(*known));
            }
        }
        found
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The key in an `Authorization: Bearer KEY` header value.
pub(crate) fn bearer(header: &str) -> Option<&str> {
    let (scheme, key) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        let keys = Keys::new(&["alpha".into(), "beta".into()]);
        assert!(keys.check("alpha").is_some());
        assert_ne!(keys.check("alpha"), keys.check("beta"));
        assert!(keys.check("alph").is_none());
        assert!(keys.check("").is_none());
        assert_eq!(bearer("Bearer  k1 "), Some("k1"));
        assert_eq!(bearer("bearer k"), Some("k"));
        assert_eq!(bearer("Basic k"), None);
    }
}
