//! Grants (EPUB, ESUB, EREQ), `INT UID`, and the error replies every flow sends.
//!
//! A grant is replicated to every shard before the service's next message is handled (it
//! waits for the acknowledgements), so a client on any shard sees it from then on.

use std::rc::Rc;

use super::connection::Connection;
use super::mailbox::Mail;
use super::{Shard, TopicName};
use crate::grants::Grant;
use crate::ids::{ConnectionId, ShardId};
use crate::limits::ERROR_ENVELOPE_BYTES;
use crate::protocol::message::{Command, Message};
use crate::protocol::reply::{self, ErrorCode};
use crate::protocol::ws::Opcode;

impl Shard {
    pub(super) fn grant(&mut self, conn: &Rc<Connection>, command: Command, topic: &[u8]) {
        if !conn.is_service() {
            return self.error(
                conn,
                ErrorCode::NotTrusted,
                command.as_str().as_bytes(),
                topic,
                None,
            );
        }
        let grant = Grant::given_by(command).expect("only EPUB, ESUB and EREQ get here");
        self.grants.insert(grant, topic);
        let name: TopicName = topic.into();
        if self.cluster.is_some() {
            self.put_grant(conn, grant, &name);
        }
        let me = self.id();
        for s in 0..self.config.shards {
            let shard = ShardId(s as u16);
            if shard != me {
                conn.awaiting_acks.set(conn.awaiting_acks.get() + 1);
                self.send(shard, Mail::Grant { grant, topic: name.clone(), ack: Some(conn.id) });
            }
        }
        if command == Command::Ereq && !conn.responder_for.borrow().iter().any(|t| **t == *topic) {
            conn.responder_for.borrow_mut().push(name.clone());
            let owner = self.placement.owner(topic);
            let responder = conn.id;
            let ack = (owner != me).then(|| {
                conn.awaiting_acks.set(conn.awaiting_acks.get() + 1);
                conn.id
            });
            self.send(owner, Mail::Register { topic: name, responder, ack });
        }
    }

    /// `INT UID` with `forcid` and `setuid`.
    pub(super) fn interpose(&mut self, conn: &Rc<Connection>, msg: &Message<'_>) {
        if !conn.is_service() {
            return self.error(conn, ErrorCode::NotTrusted, b"INT", msg.target, None);
        }
        if msg.target != b"UID" {
            return self.error(conn, ErrorCode::UnknownCommand, b"INT", msg.target, None);
        }
        let (Some(forcid), Some(uid)) = (msg.header("forcid"), msg.header("setuid")) else {
            return self.malformed(conn, "INT UID needs forcid and setuid headers");
        };
        // The Uid goes into every message of that connection, text frames included.
        if std::str::from_utf8(uid).is_err() {
            return self.malformed(conn, "setuid must be UTF-8");
        }
        let target = ConnectionId::parse(forcid).filter(|c| c.shard.index() < self.config.shards);
        let Some(target) = target else {
            return self.error(conn, ErrorCode::NoConnection, b"INT", b"UID", None);
        };
        if target.shard == self.id() {
            self.set_uid(target, uid, conn.id);
        } else {
            self.send(target.shard, Mail::SetUid { target, uid: uid.into(), from: conn.id });
        }
    }

    pub(super) fn set_uid(&mut self, target: ConnectionId, uid: &[u8], from: ConnectionId) {
        match self.connections.get(&target.local).filter(|c| c.id == target) {
            Some(conn) => conn.set_uid(uid),
            None => {
                let mut payload = Vec::with_capacity(96);
                let mut text = Vec::with_capacity(32);
                reply::write_error_text(ErrorCode::NoConnection, b"INT", b"UID", &mut text);
                reply::write_error(ErrorCode::NoConnection, None, &text, &mut payload);
                self.stats.errors[ErrorCode::NoConnection as usize] += 1;
                if from.shard == self.id() {
                    if let Some(c) = self.connections.get(&from.local) {
                        c.reply_text(&payload);
                    }
                } else {
                    let frame = self
                        .frame(Opcode::Text, payload.len(), |out| out.extend_from_slice(&payload));
                    self.send(from.shard, Mail::Direct { to: from, frame: frame.into_shared() });
                }
            }
        }
    }

    /// Answers a message that could not be parsed.
    pub fn malformed(&mut self, conn: &Rc<Connection>, what: &str) {
        self.error(conn, ErrorCode::Malformed, what.as_bytes(), b"", None);
    }

    pub(super) fn error(
        &mut self,
        conn: &Rc<Connection>,
        code: ErrorCode,
        command: &[u8],
        target: &[u8],
        req_id: Option<&[u8]>,
    ) {
        self.stats.errors[code as usize] += 1;
        // The text goes through a reused scratch buffer: a flood of bad messages costs one
        // allocation per error (the frame), which stays queued until the peer reads it.
        let mut text = std::mem::take(&mut self.text);
        text.clear();
        reply::write_error_text(code, command, target, &mut text);
        let room = text.len() + req_id.map_or(0, <[u8]>::len) + ERROR_ENVELOPE_BYTES;
        let frame =
            self.frame(Opcode::Text, room, |out| reply::write_error(code, req_id, &text, out));
        self.text = text;
        conn.reply(frame.into_local());
    }

    pub(super) fn limit(
        &mut self,
        conn: &Rc<Connection>,
        which: &str,
        command: &[u8],
        target: &[u8],
        req_id: Option<&[u8]>,
    ) {
        let mut what = Vec::with_capacity(which.len() + 1 + command.len());
        what.extend_from_slice(which.as_bytes());
        what.push(b' ');
        what.extend_from_slice(command);
        self.error(conn, ErrorCode::Limit, &what, target, req_id);
    }
}
