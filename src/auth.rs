//! API keys and the two roles they grant.
//!
//! Keys are compared byte for byte (no trimming, case-sensitive, as the original). They are
//! never logged, printed or put in an error: [`Keys`]'s `Debug` shows only how many there are.

use std::fmt;

/// What a connection may do (PROTOCOL.md §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Trusted: may do everything.
    Service,
    /// Untrusted: may do only what a service granted for that exact topic.
    Client,
}

/// The configured keys.
#[derive(Clone, Default)]
pub struct Keys {
    service: Vec<Vec<u8>>,
    client: Vec<Vec<u8>>,
}

impl Keys {
    pub fn new(service: Vec<Vec<u8>>, client: Vec<Vec<u8>>) -> Self {
        Self { service, client }
    }

    pub fn is_empty(&self) -> bool {
        self.service.is_empty() && self.client.is_empty()
    }

    /// The role a key grants, if any. A key configured for both roles is a service key.
    pub fn role(&self, key: &[u8]) -> Option<Role> {
        if self.service.iter().any(|k| k == key) {
            Some(Role::Service)
        } else if self.client.iter().any(|k| k == key) {
            Some(Role::Client)
        } else {
            None
        }
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("service", &format_args!("{} key(s)", self.service.len()))
            .field("client", &format_args!("{} key(s)", self.client.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_matched_exactly() {
        let keys = Keys::new(vec![b"xyzzy".to_vec()], vec![b"plugh".to_vec()]);
        assert_eq!(keys.role(b"xyzzy"), Some(Role::Service));
        assert_eq!(keys.role(b"plugh"), Some(Role::Client));
        assert_eq!(keys.role(b"plugh\n"), None);
        assert_eq!(keys.role(b"XYZZY"), None);
        assert_eq!(keys.role(b""), None);
    }

    #[test]
    fn debug_never_shows_a_key() {
        let keys = Keys::new(vec![b"secret-one".to_vec()], vec![b"secret-two".to_vec()]);
        let shown = format!("{keys:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
