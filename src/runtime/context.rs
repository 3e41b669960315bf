//! What a shard's tasks share, and the runtime's side of a batch.
//!
//! After every message a reader hands the shard and every mail the mail loop hands it, the
//! runtime settles the connections the shard reports over budget: it writes what each socket
//! takes right now ([`super::writer::write_now`]), then asks the shard for its verdict
//! ([`Shard::judge`]) and carries it out. So the shard only queues, and a subscriber is judged
//! by what its socket refuses, never by how much one batch queued.
//!
//! Every close goes through [`ShardContext::close`]: the reason's log line and counter come
//! from [`CloseReason`] there, and nowhere else.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ahash::AHashMap;

use super::event::Event;
use super::writer::write_now;
use crate::auth::Keys;
use crate::close::{CloseCounter, CloseReason};
use crate::cluster::inbox::ClusterInbox;
use crate::limits::MAIL_BATCH;
use crate::protocol::message::Limits;
use crate::shard::connection::Connection;
use crate::shard::mailbox::{Control, Inbox, Letter, Mailboxes};
use crate::shard::Shard;

/// Settings every connection on a shard shares.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionSettings {
    pub message_bytes_max: usize,
    pub auth_timeout: Duration,
    /// How long a closing connection waits for the peer's close before the socket is shut.
    pub close_grace: Duration,
    pub limits: Limits,
    /// `--max-pending-bytes`: past it, a connection's own input is not read (see
    /// `Reader::after_input`).
    pub pending_bytes_max: usize,
    /// `--allowed-origin`; empty: any origin.
    pub allowed_origins: Vec<String>,
}

/// The runtime's side of one connection: its socket and its keep-alive clock.
pub(crate) struct Link {
    pub conn: Rc<Connection>,
    /// The peer's address, for log lines.
    pub peer: Option<SocketAddr>,
    /// The plain socket, while the reader owns it (none for TLS: its bytes go through the
    /// session, so the runtime cannot write them inline).
    pub fd: Cell<Option<RawFd>>,
    /// When the peer last sent anything (any byte counts as a sign of life).
    pub last_seen: Cell<Instant>,
    /// When the broker last pinged it (keep-alive).
    pub pinged: Cell<Option<Instant>>,
}

impl Link {
    /// The peer's address as text, for log lines.
    pub(crate) fn peer_text(&self) -> String {
        self.peer.map_or_else(|| "unknown peer".to_owned(), |p| p.to_string())
    }
}

/// What a shard's tasks share: the routing state, the mail, the live connections, the
/// scratch buffers.
pub(crate) struct ShardContext {
    pub shard: RefCell<Shard>,
    pub mailboxes: Mailboxes,
    pub inbox: Inbox,
    pub inbox_capacity: usize,
    /// Events from the cluster bridge; `None` when the broker runs alone.
    pub cluster: Option<ClusterInbox>,
    /// The keys to accept; replaced on SIGHUP when a keys file is used.
    pub keys: RefCell<Keys>,
    pub settings: ConnectionSettings,
    pub scratch: RefCell<Vec<u8>>,
    /// Ciphertext of TLS connections, one record at a time, before decryption.
    pub cipher: RefCell<Vec<u8>>,
    /// Connections alive on this shard, authenticated or not, by local id.
    pub links: RefCell<AHashMap<u64, Rc<Link>>>,
    /// Notified when mail has been handled (the shard's state may have changed: a shutdown
    /// asked for, the drain barrier complete).
    pub mail_handled: Event,
    /// Notified when the mail backlog or the inbox may have drained: readers paused on
    /// congestion re-check.
    pub uncongested: Event,
    /// Notified when a connection leaves (shutdown waits for the last).
    pub left: Event,
    pub io: IoCounters,
}

/// Counters of the runtime side, per shard (plain integers, read only when scraped).
#[derive(Debug, Default)]
pub(crate) struct IoCounters {
    pub bytes_in: Cell<u64>,
    /// Bad keys and auth timeouts.
    pub auth_failures: Cell<u64>,
    /// Connections closed for breaking RFC 6455 (1002, 1007, 1009).
    pub protocol_errors: Cell<u64>,
    /// Connections closed as slow consumers.
    pub slow_consumer_closes: Cell<u64>,
}

pub(crate) fn bump(counter: &Cell<u64>, by: u64) {
    counter.set(counter.get() + by);
}

impl ShardContext {
    /// Closes `conn` for `reason`: its log line, its counter, then the close itself. The one
    /// place a connection is closed; a connection already closing is left as it is.
    pub(crate) fn close(&self, conn: &Connection, reason: CloseReason) {
        if conn.is_closing() {
            return;
        }
        let peer = self.links.borrow().get(&conn.id.local).map(|l| l.peer_text());
        reason.log(&conn.id, &peer.as_deref().unwrap_or("unknown peer"));
        if let Some(counter) = reason.counter() {
            bump(
                match counter {
                    CloseCounter::SlowConsumer => &self.io.slow_consumer_closes,
                    CloseCounter::AuthFailure => &self.io.auth_failures,
                    CloseCounter::ProtocolError => &self.io.protocol_errors,
                },
                1,
            );
        }
        conn.close(reason);
    }

    /// Writes what the sockets of the connections over budget take now, then carries out the
    /// shard's verdict on each.
    pub(crate) fn settle(&self, shard: &mut Shard) {
        while let Some(conn) = shard.next_overflowed() {
            let fd = self.links.borrow().get(&conn.id.local).and_then(|l| l.fd.get());
            if let Some(fd) = fd {
                write_now(&conn, fd);
            }
            if let Some(reason) = shard.judge(&conn) {
                self.close(&conn, reason);
            }
        }
    }

    /// True when readers should pause: mail is waiting for room in another shard's inbox,
    /// or this shard's own inbox is filling up (reading more would only add to it).
    pub(crate) fn congested(&self) -> bool {
        self.shard.borrow().has_backlog() || self.inbox.len() > self.inbox_capacity / 2
    }

    /// Hands queued mail to the inboxes; wakes paused readers if that ended the congestion.
    pub(crate) fn flush_mail(&self) {
        let left = self.shard.borrow_mut().flush_mail(&self.mailboxes);
        if !left && !self.congested() {
            self.uncongested.notify();
        }
    }

    /// Handles up to [`MAIL_BATCH`] waiting letters and sends what they caused.
    pub(crate) fn handle_inbox(&self) {
        let mut handled = 0;
        {
            let mut shard = self.shard.borrow_mut();
            shard.set_now(Instant::now());
            while handled < MAIL_BATCH {
                let Some(letter) = self.inbox.try_recv() else { break };
                handled += 1;
                match letter {
                    Letter::Mail(mail) => {
                        shard.handle_mail(mail);
                        if shard.has_overflowed() {
                            self.settle(&mut shard);
                        }
                    }
                    Letter::Control(control) => self.handle_control(&mut shard, control),
                }
            }
        }
        if handled > 0 {
            self.inbox.made_room();
        }
        self.flush_mail();
        self.mail_handled.notify();
    }

    /// Handles up to [`MAIL_BATCH`] waiting cluster events, like a batch of mail.
    pub(crate) fn handle_cluster_inbox(&self, inbox: &ClusterInbox) {
        {
            let mut shard = self.shard.borrow_mut();
            shard.set_now(Instant::now());
            for _ in 0..MAIL_BATCH {
                let Some(event) = inbox.try_recv() else { break };
                shard.handle_event(event);
                if shard.has_overflowed() {
                    self.settle(&mut shard);
                }
            }
        }
        self.flush_mail();
        self.mail_handled.notify();
    }

    fn handle_control(&self, shard: &mut Shard, control: Control) {
        match control {
            Control::Shutdown => shard.begin_drain(),
            Control::Keys(keys) => *self.keys.borrow_mut() = keys,
            Control::Scrape { reply } => {
                let mut snapshot = shard.snapshot();
                snapshot.bytes_in = self.io.bytes_in.get();
                snapshot.auth_failures = self.io.auth_failures.get();
                snapshot.protocol_errors = self.io.protocol_errors.get();
                snapshot.slow_consumer_closes = self.io.slow_consumer_closes.get();
                snapshot.inbox_depth = self.inbox.len() as u64;
                let _ = reply.send(snapshot);
            }
        }
    }
}
