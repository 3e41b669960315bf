//! The shutdown drain barrier between shards.
//!
//! A message can take two hops after it leaves its shard (REQ: requester, owner, responder;
//! PUB: publisher, owner, subscriber), plus one for the bookkeeping it causes; the barrier
//! runs that many rounds of markers, so when it completes nothing caused by input from
//! before the shutdown is still on its way.

use super::mailbox::Mail;
use super::Shard;
use crate::ids::ShardId;

/// Rounds of the drain barrier: two hops plus the bookkeeping (see the module doc).
const DRAIN_ROUNDS: usize = 3;

/// Progress of the drain barrier.
#[derive(Debug, Default)]
pub(super) struct Drain {
    /// Rounds of markers this shard has sent to every other shard.
    sent: usize,
    /// Markers received, per round.
    received: [usize; DRAIN_ROUNDS],
    /// Every round is complete: no mail caused by input from before the shutdown is still
    /// on its way here.
    done: bool,
}

impl Shard {
    /// A `Drain` marker of `round` arrived.
    pub(super) fn drain_marker(&mut self, round: u8) {
        self.drain.received[usize::from(round)] += 1;
        self.advance_drain();
    }

    /// Starts the shutdown barrier. From now on the runtime handles no more input from
    /// sockets; the shards exchange `Drain` markers in rounds. A shard sends round `r + 1`
    /// once it has sent round `r` and received round `r` from every other shard; since mail
    /// between two shards stays in order, after the last round every mail that input from
    /// before the shutdown caused, through every hop, has been handled. Only then are the
    /// connections closed, so nothing already accepted is lost between shards.
    pub fn begin_drain(&mut self) {
        if self.shutdown_requested {
            return;
        }
        self.shutdown_requested = true;
        self.advance_drain();
    }

    pub(super) fn advance_drain(&mut self) {
        while self.shutdown_requested && !self.drain.done {
            if let Some(last) = self.drain.sent.checked_sub(1) {
                if self.drain.received[last] < self.config.shards - 1 {
                    return;
                }
                if self.drain.sent == DRAIN_ROUNDS {
                    self.drain.done = true;
                    return;
                }
            }
            let round = self.drain.sent as u8;
            let me = self.id();
            for s in 0..self.config.shards {
                let shard = ShardId(s as u16);
                if shard != me {
                    self.send(shard, Mail::Drain { round });
                }
            }
            self.drain.sent += 1;
        }
    }

    /// The drain barrier is complete (see [`Shard::begin_drain`]).
    pub fn drained(&self) -> bool {
        self.drain.done
    }
}
