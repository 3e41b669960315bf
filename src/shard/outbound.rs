//! Encoded server frames and the bounded per-connection outbound queue.
//!
//! A delivered message is encoded once per shard (WebSocket header + rewritten head + body)
//! into a [`Frame`]; every subscriber's [`OutQueue`] holds a handle to the same bytes. Pushing
//! a handle is a reference-count increment: the fan-out path does not allocate per subscriber
//! once a queue's ring buffer has reached its working size.
//!
//! The queue holds bytes only; the runtime's writer (`runtime::writer`) drains it with one
//! gathered `sendmsg`. Nothing here touches a socket.
//!
//! Invariant: `bytes` is the number of unsent bytes in the queue, counting only the unsent part
//! of the head frame; `head_sent < frames[0].len()` whenever the queue is non-empty.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use super::mailbox::SharedFrame;
use crate::limits::QUEUE_RING_RETAINED_MAX;

/// The bytes of one encoded server frame.
#[derive(Debug)]
pub enum FrameBytes {
    /// Encoded on another shard and shared across threads; `start` skips unused header room.
    Shared { bytes: Arc<Vec<u8>>, start: usize },
    /// Encoded on this shard.
    Local { bytes: Vec<u8>, start: usize },
}

impl FrameBytes {
    /// A frame encoded on this shard; `start` skips unused header room.
    pub(crate) fn local(bytes: Vec<u8>, start: usize) -> Frame {
        Rc::new(Self::Local { bytes, start })
    }

    /// A shard-local handle to a frame shared across shards (one allocation: the `Rc`).
    pub(crate) fn shared(frame: &SharedFrame) -> Frame {
        Rc::new(Self::Shared { bytes: frame.bytes.clone(), start: frame.start as usize })
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            Self::Shared { bytes, start } => &bytes[*start..],
            Self::Local { bytes, start } => &bytes[*start..],
        }
    }
}

/// A shard-local handle to an encoded frame: cloning it is a non-atomic increment.
pub type Frame = Rc<FrameBytes>;

/// A connection's unsent frames, bounded by bytes.
#[derive(Debug, Default)]
pub struct OutQueue {
    frames: VecDeque<Frame>,
    head_sent: usize,
    bytes: usize,
}

impl OutQueue {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Queued frames (the head counts even when partly sent).
    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }

    /// Unsent bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether `len` more bytes stay within `bytes_max`. An empty queue takes any frame, so
    /// one message larger than the budget still goes out.
    pub(crate) fn fits(&self, len: usize, bytes_max: usize) -> bool {
        self.bytes + len <= bytes_max || self.frames.is_empty()
    }

    /// Queues a frame the broker must send whatever the budget: a close frame, or a reply
    /// bounded by the peer's own input.
    pub fn push_unbounded(&mut self, frame: Frame) {
        self.bytes += frame.as_slice().len();
        self.frames.push_back(frame);
    }

    /// Drops every frame not yet started, keeping a partly sent head frame so the stream
    /// stays well formed. Used before a close frame when a consumer is cut off.
    pub fn discard_unstarted(&mut self) {
        let keep = usize::from(self.head_sent > 0);
        while self.frames.len() > keep {
            if let Some(f) = self.frames.pop_back() {
                self.bytes -= f.as_slice().len();
            }
        }
        if self.frames.is_empty() {
            self.release();
        }
    }

    /// The unsent part of the head frame.
    pub fn head(&self) -> Option<&[u8]> {
        self.frames.front().map(|f| &f.as_slice()[self.head_sent..])
    }

    /// Marks `n` bytes as sent.
    pub fn advance(&mut self, mut n: usize) {
        debug_assert!(n <= self.bytes);
        self.bytes -= n;
        while n > 0 {
            let Some(front) = self.frames.front() else {
                debug_assert!(false, "advanced past the queue");
                return;
            };
            let left = front.as_slice().len() - self.head_sent;
            if n < left {
                self.head_sent += n;
                return;
            }
            n -= left;
            self.head_sent = 0;
            self.frames.pop_front();
        }
        if self.frames.is_empty() {
            self.release();
        }
    }

    /// Frees the ring buffer of a queue that grew large, so an idle connection stays small.
    fn release(&mut self) {
        if self.frames.capacity() > QUEUE_RING_RETAINED_MAX {
            self.frames = VecDeque::new();
        }
    }

    /// The unsent bytes of each queued frame, oldest first (the head without its sent part).
    /// The writer gathers these into one `sendmsg`, then calls [`OutQueue::advance`].
    pub(crate) fn unsent(&self) -> impl Iterator<Item = &[u8]> {
        self.frames.iter().enumerate().map(|(i, frame)| {
            let bytes = frame.as_slice();
            if i == 0 {
                &bytes[self.head_sent..]
            } else {
                bytes
            }
        })
    }

    /// Drops up to `n` of the newest frames, none of them partly sent; returns how many went.
    /// Used under `--slow-consumer drop` for the frames queued past the budget.
    pub(crate) fn drop_newest(&mut self, n: usize) -> usize {
        let mut dropped = 0;
        while dropped < n && self.frames.len() > usize::from(self.head_sent > 0) {
            let Some(f) = self.frames.pop_back() else { break };
            self.bytes -= f.as_slice().len();
            dropped += 1;
        }
        if self.frames.is_empty() {
            self.release();
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: &[u8]) -> Frame {
        FrameBytes::local(bytes.to_vec(), 0)
    }

    #[test]
    fn the_byte_budget_never_refuses_an_empty_queue() {
        let mut q = OutQueue::default();
        assert!(q.fits(10, 5), "an empty queue takes any frame");
        q.push_unbounded(frame(&[0; 10]));
        assert!(!q.fits(1, 10));
        assert!(q.fits(0, 10));
        assert_eq!(q.bytes(), 10);
    }

    #[test]
    fn drop_newest_keeps_a_partly_sent_head() {
        let mut q = OutQueue::default();
        for f in [&b"abc"[..], b"de", b"f"] {
            q.push_unbounded(frame(f));
        }
        assert_eq!(q.drop_newest(1), 1);
        assert_eq!(q.bytes(), 5);
        q.advance(1);
        assert_eq!(q.drop_newest(5), 1, "the partly sent head stays");
        assert_eq!(q.head(), Some(&b"bc"[..]));
    }

    #[test]
    fn advance_walks_partial_frames() {
        let mut q = OutQueue::default();
        q.push_unbounded(frame(b"abc"));
        q.push_unbounded(frame(b"defg"));
        q.advance(2);
        assert_eq!(q.head(), Some(&b"c"[..]));
        q.advance(2);
        assert_eq!(q.head(), Some(&b"efg"[..]));
        assert_eq!(q.bytes(), 3);
        q.advance(3);
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn discard_keeps_a_partly_sent_head() {
        let mut q = OutQueue::default();
        for f in [&b"abc"[..], b"de", b"f"] {
            q.push_unbounded(frame(f));
        }
        q.advance(1);
        q.discard_unstarted();
        assert_eq!(q.head(), Some(&b"bc"[..]));
        assert_eq!(q.bytes(), 2);
        q.advance(2);
        q.push_unbounded(frame(b"xy"));
        q.discard_unstarted();
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }
}
