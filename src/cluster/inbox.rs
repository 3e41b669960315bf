//! The shards' inboxes for bridge events: one bounded queue per shard, woken through an
//! `AtomicWaker`, the same kind as the cross-shard mailbox (`src/shard/mailbox.rs`).
//!
//! What it is: a [`super::ShardPort`] a shard can await from glommio. What it is not: a
//! replacement for the shard's mail; a shard awaits both. It is a separate queue so that the
//! bridge's traffic and its bound do not depend on how the shard's mail is shaped.
//!
//! Invariant: the bridge only ever `try_send`s (it keeps its own bounded backlog when an inbox
//! is full); a shard registers its waker before it parks and re-checks after, so no wake-up
//! is lost.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::{Event, ShardPort};
use crate::ids::ShardId;

/// The bridge's ends of every shard's inbox.
#[derive(Clone)]
pub(crate) struct ClusterInboxes {
    tx: Vec<Sender<Event>>,
    wakers: Vec<Arc<AtomicWaker>>,
}

/// One shard's end.
pub(crate) struct ClusterInbox {
    rx: Receiver<Event>,
    waker: Arc<AtomicWaker>,
}

/// Creates `shards` inboxes of `capacity` events each.
pub(crate) fn cluster_inboxes(
    shards: usize,
    capacity: usize,
) -> (ClusterInboxes, Vec<ClusterInbox>) {
    let mut tx = Vec::with_capacity(shards);
    let mut wakers = Vec::with_capacity(shards);
    let mut inboxes = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (s, r) = crossbeam_channel::bounded(capacity);
        let waker = Arc::new(AtomicWaker::new());
        tx.push(s);
        wakers.push(waker.clone());
        inboxes.push(ClusterInbox { rx: r, waker });
    }
    (ClusterInboxes { tx, wakers }, inboxes)
}

impl ShardPort for ClusterInboxes {
    fn shards(&self) -> usize {
        self.tx.len()
    }

    fn try_send(&self, shard: ShardId, event: Event) -> Result<(), Event> {
        match self.tx[shard.index()].try_send(event) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(e) | TrySendError::Disconnected(e)) => Err(e),
        }
    }

    fn wake(&self, shard: ShardId) {
        self.wakers[shard.index()].wake();
    }
}

impl ClusterInbox {
    /// Resolves when at least one event is waiting.
    pub(crate) async fn ready(&self) {
        poll_fn(|cx| {
            if !self.rx.is_empty() {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // Re-check after registering: a sender that queued in between saw no waker.
            if self.rx.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    pub(crate) fn try_recv(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Blocks up to `timeout`; for threads that are not shards (tests, tools).
    pub(crate) fn recv_timeout(&self, timeout: std::time::Duration) -> Option<Event> {
        self.rx.recv_timeout(timeout).ok()
    }

    pub(crate) fn len(&self) -> usize {
        self.rx.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}
