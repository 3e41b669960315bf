//! The NATS names of the cluster: subjects, queue group, KV buckets and keys.
//!
//! What it is: pure functions from middleman names (topics, node epochs, shards) to NATS names
//! and back. What it is not: anything that talks to NATS.
//!
//! Invariants:
//! - A topic becomes exactly one subject token, losslessly: base64url without padding of its
//!   bytes, and `=` for the empty topic (unpadded base64 never holds `=`, so no other topic
//!   encodes to it). The token never holds `.`, `*`, `>` or whitespace, so it is one valid token
//!   whatever the topic holds, and it is also a valid JetStream KV key segment.
//! - Every subject starts with the prefix (`--cluster-prefix`, one token of `[A-Za-z0-9_-]`),
//!   so several clusters can share one NATS without seeing each other.
//! - A node is named on the wire by its *epoch*: the 32-bit field every cid of that node
//!   carries (`src/ids.rs`), unique among live nodes (the bridge claims it in the nodes bucket
//!   at start). So `MSG:<cid>` and `INT UID` route by the cid alone, and the cid's wire form
//!   stays the 20 characters PROTOCOL.md gives.
//!
//! ```text
//! <p>.pub.<tok>                       PUB of topic <tok>; a node subscribes while it has local subscribers
//! <p>.req.<tok>                       REQ of topic <tok>; queue group `svc`, one member per node with responders
//! <p>.res.<epoch>.<shard>.<kind>.<id> replies to node <epoch>'s shard; kind r (request) or d (direct)
//! <p>.node.<epoch>.<shard>            MSG:<cid> and INT UID for a connection on node <epoch>, shard <shard>
//! <p>.ctl.barrier                     nobody subscribes: a request here is a server round trip (503)
//! KV <p>_grants: pub.<tok> sub.<tok> req.<tok>     one key per grant, value `1`, add-only
//! KV <p>_nodes:  name.<tok(node name)> epoch.<n>   live nodes, refreshed by heartbeat, max_age TTL
//! ```

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::grants::Grant;
use crate::ids::ShardId;

/// The token of the empty topic (no base64url output without padding contains `=`).
const EMPTY_TOKEN: &str = "=";

/// The queue group every node's request subscription joins: one name for the whole cluster, so
/// NATS picks exactly one member per request among all nodes.
pub(crate) const QUEUE_GROUP: &str = "svc";

/// NATS refuses a control line above 4096 bytes (`max_control_line`) and closes the
/// connection, so longer subjects are refused before they are sent. The margin leaves room for
/// `HPUB`, the reply subject and the sizes on the same line.
pub(crate) const MAX_SUBJECT_LEN: usize = 2048;

/// Encodes `topic` into one subject token.
pub(crate) fn topic_token(topic: &[u8]) -> String {
    if topic.is_empty() {
        EMPTY_TOKEN.to_owned()
    } else {
        URL_SAFE_NO_PAD.encode(topic)
    }
}

/// Decodes a token made by [`topic_token`]; `None` for anything else.
pub(crate) fn topic_from_token(token: &str) -> Option<Vec<u8>> {
    if token == EMPTY_TOKEN {
        return Some(Vec::new());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    // base64 decoders accept some non-canonical inputs (stray low bits); only the canonical
    // form is ours, which keeps decode(encode(x)) = x a bijection.
    (!bytes.is_empty() && URL_SAFE_NO_PAD.encode(&bytes) == token).then_some(bytes)
}

/// Whether `prefix` is usable: one subject token that is also valid in a KV bucket name.
pub(crate) fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= 64
        && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What a reply subject answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ReplyKind {
    /// A REQ's RES (or its failure).
    Request,
    /// A `MSG:<cid>` or `INT UID` to another node: only a failure (`no-connection`) comes back.
    Direct,
}

impl ReplyKind {
    fn letter(self) -> &'static str {
        match self {
            Self::Request => "r",
            Self::Direct => "d",
        }
    }
}

/// Where on this node a reply goes: the shard and the shard's own id for what it waits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ReplyTo {
    pub(crate) shard: ShardId,
    pub(crate) kind: ReplyKind,
    pub(crate) id: u64,
}

/// The subjects of one node under one prefix.
#[derive(Clone, Debug)]
pub(crate) struct Subjects {
    prefix: String,
    epoch: u32,
}

impl Subjects {
    pub(crate) fn new(prefix: &str, epoch: u32) -> Self {
        Self { prefix: prefix.to_owned(), epoch }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn epoch(&self) -> u32 {
        self.epoch
    }

    pub(crate) fn publish(&self, topic: &[u8]) -> String {
        format!("{}.pub.{}", self.prefix, topic_token(topic))
    }

    pub(crate) fn request(&self, topic: &[u8]) -> String {
        format!("{}.req.{}", self.prefix, topic_token(topic))
    }

    /// The reply subject for `to` on this node.
    pub(crate) fn reply(&self, to: ReplyTo) -> String {
        format!("{}.res.{}.{}.{}.{}", self.prefix, self.epoch, to.shard.0, to.kind.letter(), to.id)
    }

    /// The one wildcard subscription that receives every reply for this node.
    pub(crate) fn replies_wildcard(&self) -> String {
        format!("{}.res.{}.>", self.prefix, self.epoch)
    }

    /// Parses a reply subject of this node; `None` if it is not one.
    pub(crate) fn parse_reply(&self, subject: &str) -> Option<ReplyTo> {
        let rest = self.strip_node(subject, "res")?;
        let mut parts = rest.split('.');
        let shard = parse_u16(parts.next()?)?;
        let kind = match parts.next()? {
            "r" => ReplyKind::Request,
            "d" => ReplyKind::Direct,
            _ => return None,
        };
        let id = parse_u64(parts.next()?)?;
        parts.next().is_none().then_some(ReplyTo { shard: ShardId(shard), kind, id })
    }

    /// The subject of connection-addressed traffic for `shard` of the node with `epoch`.
    pub(crate) fn direct(&self, epoch: u32, shard: ShardId) -> String {
        format!("{}.node.{}.{}", self.prefix, epoch, shard.0)
    }

    pub(crate) fn directs_wildcard(&self) -> String {
        format!("{}.node.{}.>", self.prefix, self.epoch)
    }

    /// Parses a direct subject of this node into its shard.
    pub(crate) fn parse_direct(&self, subject: &str) -> Option<ShardId> {
        let rest = self.strip_node(subject, "node")?;
        parse_u16(rest).map(ShardId)
    }

    pub(crate) fn barrier(&self) -> String {
        format!("{}.ctl.barrier", self.prefix)
    }

    pub(crate) fn grants_bucket(&self) -> String {
        format!("{}_grants", self.prefix)
    }

    pub(crate) fn nodes_bucket(&self) -> String {
        format!("{}_nodes", self.prefix)
    }

    /// `<p>.<what>.<epoch>.` removed from the front of `subject`.
    fn strip_node<'a>(&self, subject: &'a str, what: &str) -> Option<&'a str> {
        let rest = subject.strip_prefix(self.prefix.as_str())?.strip_prefix('.')?;
        let rest = rest.strip_prefix(what)?.strip_prefix('.')?;
        let (epoch, rest) = rest.split_once('.')?;
        (parse_u64(epoch)? == u64::from(self.epoch)).then_some(rest)
    }
}

/// The KV key of a grant.
pub(crate) fn grant_key(grant: Grant, topic: &[u8]) -> String {
    let kind = match grant {
        Grant::Publish => "pub",
        Grant::Subscribe => "sub",
        Grant::Request => "req",
    };
    format!("{kind}.{}", topic_token(topic))
}

/// Parses a grant key back; `None` for keys that are not grants.
pub(crate) fn parse_grant_key(key: &str) -> Option<(Grant, Vec<u8>)> {
    let (kind, token) = key.split_once('.')?;
    let grant = match kind {
        "pub" => Grant::Publish,
        "sub" => Grant::Subscribe,
        "req" => Grant::Request,
        _ => return None,
    };
    Some((grant, topic_from_token(token)?))
}

pub(crate) fn node_name_key(name: &str) -> String {
    format!("name.{}", topic_token(name.as_bytes()))
}

pub(crate) fn node_epoch_key(epoch: u32) -> String {
    format!("epoch.{epoch}")
}

/// Canonical decimal only (no sign, no leading zeros), so each number has one subject.
fn parse_u64(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if canonical {
        text.parse().ok()
    } else {
        None
    }
}

fn parse_u16(text: &str) -> Option<u16> {
    parse_u64(text).and_then(|v| u16::try_from(v).ok())
}

/// Whether `token` is one valid NATS subject token for publishing: non-empty, no separator,
/// no wildcard, no whitespace or control byte.
pub(crate) fn is_valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.bytes().all(|b| !matches!(b, b'.' | b'*' | b'>') && b > b' ' && b != 0x7f)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn awkward_topics_round_trip_into_one_token() {
        let topics: [&[u8]; 9] = [
            b"",
            b"a",
            b"a.b",
            b"a b",
            b"*",
            b">",
            b"MSG:0123456789abcdefghij",
            b"\0\xff\xfe",
            b"=",
        ];
        for topic in topics {
            let token = topic_token(topic);
            assert!(is_valid_token(&token), "{topic:?} -> {token:?}");
            assert_eq!(topic_from_token(&token).as_deref(), Some(topic), "{token}");
        }
        assert_eq!(topic_token(b""), "=");
        assert_eq!(topic_token(b"chat"), "Y2hhdA");
    }

    /// Property: over many random topics (random lengths, every byte value, and the bytes
    /// NATS treats specially over-represented), encoding is injective, always one valid token,
    /// and decodes back.
    #[test]
    fn encoding_is_injective_and_always_one_token() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let special = [b'.', b' ', b'*', b'>', b'\t', b'\n', 0, 0xff, b'='];
        let mut seen: HashMap<String, Vec<u8>> = HashMap::new();
        for _ in 0..20_000 {
            let len = rng.random_range(0..24);
            let topic: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.random_bool(0.3) {
                        special[rng.random_range(0..special.len())]
                    } else {
                        rng.random()
                    }
                })
                .collect();
            let token = topic_token(&topic);
            assert!(is_valid_token(&token), "{topic:?} -> {token:?}");
            assert_eq!(topic_from_token(&token).as_ref(), Some(&topic));
            if let Some(other) = seen.insert(token.clone(), topic.clone()) {
                assert_eq!(other, topic, "two topics share the token {token}");
            }
        }
        assert!(seen.len() > 10_000, "the generator produced too few distinct topics");
    }

    #[test]
    fn foreign_tokens_do_not_decode() {
        // Not base64url, padded, or non-canonical trailing bits: none is ours.
        for token in ["a.b", "Y2hhdA==", "Y2hhdB", "", "+/"] {
            assert_eq!(topic_from_token(token), None, "{token}");
        }
    }

    #[test]
    fn subjects_name_prefix_node_and_shard() {
        let s = Subjects::new("mm", 1_790_000_000);
        assert_eq!(s.publish(b"a.b"), "mm.pub.YS5i");
        assert_eq!(s.request(b""), "mm.req.=");
        let to = ReplyTo { shard: ShardId(3), kind: ReplyKind::Request, id: 125 };
        let reply = s.reply(to);
        assert_eq!(reply, "mm.res.1790000000.3.r.125");
        assert_eq!(s.parse_reply(&reply), Some(to));
        let d = ReplyTo { shard: ShardId(0), kind: ReplyKind::Direct, id: 0 };
        assert_eq!(s.parse_reply(&s.reply(d)), Some(d));
        assert_eq!(s.direct(7, ShardId(1)), "mm.node.7.1");
        assert_eq!(Subjects::new("mm", 7).parse_direct("mm.node.7.1"), Some(ShardId(1)));
        assert_eq!(s.replies_wildcard(), "mm.res.1790000000.>");
        assert_eq!(s.directs_wildcard(), "mm.node.1790000000.>");
        assert_eq!(s.grants_bucket(), "mm_grants");
    }

    #[test]
    fn other_nodes_and_malformed_replies_are_not_ours() {
        let s = Subjects::new("mm", 5);
        for subject in [
            "mm.res.6.0.r.1",
            "mx.res.5.0.r.1",
            "mm.res.5.0.x.1",
            "mm.res.5.0.r",
            "mm.res.5.0.r.1.2",
            "mm.res.5.70000.r.1",
            "mm.res.05.0.r.1",
            "mm.res.5.0.r.-1",
            "mm.node.5.0",
        ] {
            assert_eq!(s.parse_reply(subject), None, "{subject}");
        }
        assert_eq!(s.parse_direct("mm.node.6.0"), None);
        assert_eq!(s.parse_direct("mm.node.5.0.1"), None);
    }

    #[test]
    fn grant_keys_round_trip_and_are_valid_kv_keys() {
        for (grant, topic) in
            [(Grant::Publish, &b"a.b c"[..]), (Grant::Subscribe, b""), (Grant::Request, b"\xff")]
        {
            let key = grant_key(grant, topic);
            let valid = key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b));
            assert!(valid && !key.ends_with('.'), "{key}");
            assert_eq!(parse_grant_key(&key), Some((grant, topic.to_vec())));
        }
        assert_eq!(parse_grant_key("pux.YQ"), None);
        assert_eq!(node_name_key("a b"), "name.YSBi");
    }

    #[test]
    fn prefixes_are_one_token() {
        assert!(valid_prefix("mm") && valid_prefix("mm-test_2"));
        for bad in ["", "a.b", "a b", "*", ">", "$SYS", &"x".repeat(65)] {
            assert!(!valid_prefix(bad), "{bad}");
        }
    }
}
