//! Encoding the frames a shard sends: one server frame with its header written in place,
//! and the relayed form of a message (sender's cid and Uid added).

use std::ops::Range;
use std::sync::Arc;

use super::connection::Connection;
use super::mailbox::SharedFrame;
use super::outbound::{Frame, FrameBytes};
use super::Shard;
use crate::ids::RequestId;
use crate::protocol::message::{self, Message, Sender};
use crate::protocol::ws::{self, Opcode};

/// One encoded server frame: `bytes[start..]` is the frame (room for the longest header is
/// reserved in front and the unused part skipped), `topic` where the topic is in `bytes`.
#[derive(Debug)]
pub(super) struct Encoded {
    pub bytes: Vec<u8>,
    pub start: usize,
    pub topic: Range<u32>,
}

impl Encoded {
    /// A handle for this shard's own connections.
    pub(super) fn into_local(self) -> Frame {
        FrameBytes::local(self.bytes, self.start)
    }

    /// Bytes to share with other shards.
    pub(super) fn into_shared(self) -> SharedFrame {
        SharedFrame { bytes: Arc::new(self.bytes), start: self.start as u32, topic: self.topic }
    }
}

impl Shard {
    /// Encodes one server frame: `write` appends the payload.
    pub(super) fn frame(
        &mut self,
        opcode: Opcode,
        payload_len: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Encoded {
        let room = ws::HEADER_BYTES_MAX;
        let mut bytes = Vec::with_capacity(room + payload_len);
        bytes.resize(room, 0);
        write(&mut bytes);
        let len = bytes.len() - room;
        self.header.clear();
        ws::encode_header(opcode, len, &mut self.header);
        let start = room - self.header.len();
        bytes[start..room].copy_from_slice(&self.header);
        Encoded { bytes, start, topic: 0..0 }
    }

    /// Encodes the relayed form of `msg` from `conn` as one frame, sized exactly, with where
    /// its topic is.
    pub(super) fn encode(
        &mut self,
        conn: &Connection,
        binary: bool,
        msg: &Message<'_>,
        req_id: Option<&[u8]>,
        rid: Option<RequestId>,
    ) -> Encoded {
        let opcode = if binary { Opcode::Binary } else { Opcode::Text };
        let rid = rid.map(|r| r.0);
        let mut encoded = conn.with_uid(|uid| {
            let sender = Sender { cid: &conn.cid, uid };
            let len = message::relay_len(msg, sender, req_id, rid);
            self.frame(opcode, len, |out| message::write_relay(msg, sender, req_id, rid, out))
        });
        let topic_start = ws::HEADER_BYTES_MAX + msg.word.len() + 1;
        encoded.topic = topic_start as u32..(topic_start + msg.target.len()) as u32;
        debug_assert_eq!(
            &encoded.bytes[encoded.topic.start as usize..encoded.topic.end as usize],
            msg.target
        );
        encoded
    }
}
