//! Mail between shards, from this shard's side: what each mail does on arrival, and how
//! mail leaves (queued per destination, handed to the inboxes after a batch).
//!
//! Invariant: mail to a destination leaves in the order it was queued; a full inbox keeps the
//! rest in this shard's backlog, in order, and the runtime pauses its readers until it drains.

use super::mailbox::{Mail, Mailboxes};
use super::outbound::FrameBytes;
use super::Shard;
use crate::cluster::InterestKind;
use crate::ids::{ConnectionId, ShardId};

impl Shard {
    /// Handles one mail from another shard (or from this one, through [`Shard::send`]).
    pub fn handle_mail(&mut self, mail: Mail) {
        match mail {
            Mail::Publish(frame) => {
                let copy = self.cluster.is_some().then(|| frame.clone());
                self.fan_out(frame);
                if let Some(frame) = copy {
                    self.publish_cluster(&frame);
                }
            }
            Mail::Deliver(frame) => self.deliver_shared(frame),
            Mail::Interest { topic, shard, subscribed, ack } => {
                if self.cluster.is_none() {
                    self.interest.set(topic, shard, subscribed);
                    return self.ack(ack);
                }
                let local = !self.subscriptions.get(&topic).is_empty();
                let was = local || self.interest.shards(&topic) != 0;
                self.interest.set(topic.clone(), shard, subscribed);
                let now = local || self.interest.shards(&topic) != 0;
                if was == now {
                    return self.ack(ack);
                }
                self.node_interest(InterestKind::Publish, &topic, now, ack);
            }
            Mail::Grant { grant, topic, ack } => {
                self.grants.insert(grant, &topic);
                self.ack(ack);
            }
            Mail::Register { topic, responder, ack } => {
                self.pools.register(topic, responder);
                self.ack(ack);
            }
            Mail::Ack { to } => {
                if let Some(conn) = self.connections.get(&to.local).filter(|c| c.id == to) {
                    conn.awaiting_acks.set(conn.awaiting_acks.get() - 1);
                    if conn.awaiting_acks.get() == 0 {
                        conn.wake_reader();
                    }
                }
            }
            Mail::Unregister { topic, responder } => self.pools.unregister(&topic, responder),
            Mail::Request(request) => self.pick_responder(request),
            Mail::Assign { request, responder, owner } => self.assign(*request, responder, owner),
            Mail::Failed { rid, code } => self.fail(rid, code),
            Mail::Response { rid, frame } => self.complete(rid, FrameBytes::shared(&frame)),
            Mail::Done { rid } => self.pools.done(rid),
            Mail::Forget { rid, timed_out } => self.forget(rid, timed_out),
            Mail::SetUid { target, uid, from } => self.set_uid(target, &uid, from),
            Mail::Direct { to, frame } => {
                if let Some(conn) = self.connections.get(&to.local).filter(|c| c.id == to) {
                    conn.reply(FrameBytes::shared(&frame));
                }
            }
            Mail::Drain { round } => self.drain_marker(round),
        }
    }

    /// Answers a mail that asked for an acknowledgement.
    pub(super) fn ack(&mut self, to: Option<ConnectionId>) {
        if let Some(to) = to {
            self.send(to.shard, Mail::Ack { to });
        }
    }

    /// Sends mail to a shard; mail to this shard is handled at once.
    pub(super) fn send(&mut self, to: ShardId, mail: Mail) {
        if to == self.id() {
            self.handle_mail(mail);
        } else {
            self.outgoing[to.index()].push_back(mail);
        }
    }

    /// Hands queued mail to the destination inboxes, waking each destination once. Mail an
    /// inbox has no room for stays queued, in order; returns whether any is left.
    pub fn flush_mail(&mut self, mailboxes: &Mailboxes) -> bool {
        let mut left = self.flush_cluster();
        for (i, queue) in self.outgoing.iter_mut().enumerate() {
            if queue.is_empty() {
                continue;
            }
            let to = ShardId(i as u16);
            while let Some(mail) = queue.pop_front() {
                if let Err(mail) = mailboxes.try_send(to, mail) {
                    queue.push_front(mail);
                    self.stats.mail_backlogged += 1;
                    left = true;
                    break;
                }
            }
            mailboxes.wake(to);
        }
        left
    }

    /// Takes the queued mail for `to` (for tests that move mail themselves).
    #[cfg(any(test, feature = "testing"))]
    pub fn take_mail(&mut self, to: ShardId) -> std::collections::VecDeque<Mail> {
        std::mem::take(&mut self.outgoing[to.index()])
    }

    pub fn has_backlog(&self) -> bool {
        self.outgoing.iter().any(|q| !q.is_empty()) || self.cluster_backlogged()
    }
}
