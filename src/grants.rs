//! Grants: what services allowed clients to do, per exact topic.
//!
//! Grants only ever grow (PROTOCOL.md §4: a grant lasts for the life of the broker), so every
//! shard keeps a full replica and checks permissions locally with no cross-shard hop. A grant
//! is applied on the granting shard at once and broadcast to all others.

use ahash::AHashMap;

use crate::protocol::message::Command;

/// One kind of grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// `EPUB`: clients may `PUB`.
    Publish = 1,
    /// `ESUB`: clients may `SUB`.
    Subscribe = 2,
    /// `EREQ`: clients may `REQ`.
    Request = 4,
}

impl Grant {
    /// The grant a client needs for `command`, if it is one a grant can allow.
    pub fn needed_for(command: Command) -> Option<Self> {
        match command {
            Command::Pub => Some(Self::Publish),
            Command::Sub => Some(Self::Subscribe),
            Command::Req => Some(Self::Request),
            _ => None,
        }
    }

    /// The grant a command gives, for `EPUB`, `ESUB`, `EREQ`.
    pub fn given_by(command: Command) -> Option<Self> {
        match command {
            Command::Epub => Some(Self::Publish),
            Command::Esub => Some(Self::Subscribe),
            Command::Ereq => Some(Self::Request),
            _ => None,
        }
    }
}

/// A shard's replica of every grant.
#[derive(Debug, Default)]
pub struct Grants {
    by_topic: AHashMap<Box<[u8]>, u8>,
}

impl Grants {
    pub fn allows(&self, grant: Grant, topic: &[u8]) -> bool {
        self.by_topic.get(topic).is_some_and(|bits| bits & grant as u8 != 0)
    }

    pub fn insert(&mut self, grant: Grant, topic: &[u8]) {
        match self.by_topic.get_mut(topic) {
            Some(bits) => *bits |= grant as u8,
            None => {
                self.by_topic.insert(topic.into(), grant as u8);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_separate_and_exact() {
        let mut g = Grants::default();
        g.insert(Grant::Publish, b"News");
        assert!(g.allows(Grant::Publish, b"News"));
        assert!(!g.allows(Grant::Request, b"News"));
        assert!(!g.allows(Grant::Subscribe, b"News"));
        assert!(!g.allows(Grant::Publish, b"news"));
        g.insert(Grant::Request, b"News");
        assert!(g.allows(Grant::Publish, b"News") && g.allows(Grant::Request, b"News"));
    }
}
