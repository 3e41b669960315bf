//! Topic tables: who subscribes where, and which topic lives on which shard.
//!
//! Topic `T` is owned by shard `hash(T) % shards` (one fixed-seed hasher, the same on every
//! shard), except `MSG:<cid>`, which is owned by the shard of that connection so private
//! messages take no extra hop. The owner knows which *shards* have subscribers; each shard
//! knows which of *its own connections* subscribe.

use std::rc::Rc;

use ahash::AHashMap;
use smallvec::SmallVec;

use super::connection::Connection;
use super::TopicName;
use crate::ids::{ConnectionId, ShardId};
use crate::limits::SHARDS_MAX;

/// Maps a topic to the shard that owns it. The seeds are fixed so every shard (and every run)
/// agrees.
#[derive(Clone)]
pub struct Placement {
    hasher: ahash::RandomState,
    shards: usize,
}

impl Placement {
    pub fn new(shards: usize) -> Self {
        assert!((1..=SHARDS_MAX).contains(&shards));
        Self {
            hasher: ahash::RandomState::with_seeds(
                0x6d69_6464_6c65_6d61,
                0x6e20_746f_7069_6373,
                0x0123_4567_89ab_cdef,
                0xfedc_ba98_7654_3210,
            ),
            shards,
        }
    }

    pub fn owner(&self, topic: &[u8]) -> ShardId {
        if self.shards == 1 {
            return ShardId(0);
        }
        if let Some(cid) = topic.strip_prefix(b"MSG:").and_then(ConnectionId::parse) {
            if cid.shard.index() < self.shards {
                return cid.shard;
            }
        }
        ShardId((self.hasher.hash_one(topic) % self.shards as u64) as u16)
    }
}

/// This shard's own subscribers, by topic.
#[derive(Default)]
pub struct LocalSubscriptions {
    by_topic: AHashMap<TopicName, SmallVec<[Rc<Connection>; 4]>>,
}

impl LocalSubscriptions {
    /// Adds `conn`, which must not be subscribed yet (the caller checks its own list, which
    /// is short, instead of the topic's, which may be long). Returns the shared topic name and
    /// whether the topic had no local subscriber before (the owner must hear about it).
    pub fn add(&mut self, topic: &[u8], conn: &Rc<Connection>) -> (TopicName, bool) {
        if let Some((name, _)) = self.by_topic.get_key_value(topic) {
            let name = name.clone();
            let list = self.by_topic.get_mut(topic).expect("the entry was just found");
            debug_assert!(!list.iter().any(|c| Rc::ptr_eq(c, conn)), "subscribed twice");
            list.push(conn.clone());
            return (name, false);
        }
        let name: TopicName = topic.into();
        let mut list = SmallVec::new();
        list.push(conn.clone());
        self.by_topic.insert(name.clone(), list);
        (name, true)
    }

    /// Removes `conn`; returns whether it was subscribed, and `Some(topic)` if that emptied
    /// the topic here (the owner must hear about it).
    pub fn remove(&mut self, topic: &[u8], conn: &Connection) -> (bool, Option<TopicName>) {
        let Some(list) = self.by_topic.get_mut(topic) else {
            return (false, None);
        };
        let Some(i) = list.iter().position(|c| std::ptr::eq(&**c, conn)) else {
            return (false, None);
        };
        list.swap_remove(i);
        if !list.is_empty() {
            return (true, None);
        }
        let (name, _) = self.by_topic.remove_entry(topic).expect("the entry was just found");
        (true, Some(name))
    }

    pub fn get(&self, topic: &[u8]) -> &[Rc<Connection>] {
        self.by_topic.get(topic).map_or(&[], |l| l.as_slice())
    }

    pub fn topics(&self) -> usize {
        self.by_topic.len()
    }
}

/// For the topics this shard owns: which other shards have subscribers.
#[derive(Default)]
pub struct Interest {
    by_topic: AHashMap<TopicName, u64>,
}

impl Interest {
    pub fn set(&mut self, topic: TopicName, shard: ShardId, subscribed: bool) {
        let bit = 1u64 << shard.0;
        if subscribed {
            *self.by_topic.entry(topic).or_insert(0) |= bit;
        } else if let Some(mask) = self.by_topic.get_mut(&topic) {
            *mask &= !bit;
            if *mask == 0 {
                self.by_topic.remove(&topic);
            }
        }
    }

    /// The shards interested in `topic`, as a bit mask.
    pub fn shards(&self, topic: &[u8]) -> u64 {
        self.by_topic.get(topic).copied().unwrap_or(0)
    }
}

/// Iterates the shard ids set in `mask`.
pub fn each_shard(mut mask: u64) -> impl Iterator<Item = ShardId> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let i = mask.trailing_zeros();
        mask &= mask - 1;
        Some(ShardId(i as u16))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_agrees_across_instances_and_routes_private_topics_home() {
        let a = Placement::new(4);
        let b = Placement::new(4);
        for t in [&b"News"[..], b"a", b"", b"x y z"] {
            assert_eq!(a.owner(t), b.owner(t));
            assert!(a.owner(t).index() < 4);
        }
        let cid = ConnectionId { epoch: 7, shard: ShardId(3), local: 9 };
        let mut topic = b"MSG:".to_vec();
        topic.extend_from_slice(&cid.encode());
        assert_eq!(a.owner(&topic), ShardId(3));
        let far = ConnectionId { epoch: 7, shard: ShardId(40), local: 9 };
        let mut topic = b"MSG:".to_vec();
        topic.extend_from_slice(&far.encode());
        assert!(a.owner(&topic).index() < 4, "a cid naming a missing shard falls back to the hash");
    }

    #[test]
    fn each_shard_lists_set_bits() {
        assert_eq!(each_shard(0b1010_0001).map(|s| s.0).collect::<Vec<_>>(), [0, 5, 7]);
        assert_eq!(each_shard(0).count(), 0);
        assert_eq!(each_shard(1 << 63).map(|s| s.0).collect::<Vec<_>>(), [63]);
    }

    #[test]
    fn interest_tracks_shards() {
        let mut i = Interest::default();
        let t: TopicName = (&b"T"[..]).into();
        i.set(t.clone(), ShardId(1), true);
        i.set(t.clone(), ShardId(2), true);
        assert_eq!(i.shards(b"T"), 0b110);
        i.set(t.clone(), ShardId(1), false);
        i.set(t.clone(), ShardId(2), false);
        assert_eq!(i.shards(b"T"), 0);
        assert!(i.by_topic.is_empty());
    }
}
