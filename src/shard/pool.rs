//! Recycled frame buffers, so that publishing allocates nothing once a shard has warmed up.
//!
//! A pool keeps a handle to each buffer it hands out, oldest first. A buffer whose only
//! holder is the pool has been sent (or dropped) by every queue on every shard, so it can be
//! refilled. When the oldest is still held somewhere (a deep backlog, a slow consumer), the
//! pool allocates instead and, once full, forgets the oldest: it never waits, and it never
//! keeps more than [`POOL_BUFFERS`] buffers of at most [`POOL_BUFFER_BYTES_MAX`] each
//! (4 MiB per pool).
//!
//! Two kinds of handle are pooled: [`Frame`]s that stay on their shard, and the `Arc`s of
//! frames mailed to other shards, which come back to the pool when the last shard lets go.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use crate::connection::outbound::{Frame, FrameBytes};

pub const POOL_BUFFERS: usize = 256;
pub const POOL_BUFFER_BYTES_MAX: usize = 16 * 1024;

/// A shared handle to a byte buffer that can be refilled when nothing else holds it.
pub trait Recyclable: Clone {
    fn empty() -> Self;
    /// The buffer, if this is the only handle to it.
    fn buffer_if_unique(&mut self) -> Option<&mut Vec<u8>>;
    fn capacity(&self) -> usize;
    /// Records where the frame starts in the buffer, for a handle that carries it; called
    /// while the handle is still the only one.
    fn set_start(&mut self, _start: usize) {}
}

impl Recyclable for Frame {
    fn empty() -> Self {
        Rc::new(FrameBytes::Local { bytes: Vec::new(), start: 0 })
    }

    fn buffer_if_unique(&mut self) -> Option<&mut Vec<u8>> {
        match Rc::get_mut(self)? {
            FrameBytes::Local { bytes, .. } => Some(bytes),
            FrameBytes::Shared { .. } => None,
        }
    }

    fn capacity(&self) -> usize {
        match &**self {
            FrameBytes::Local { bytes, .. } => bytes.capacity(),
            FrameBytes::Shared { bytes, .. } => bytes.capacity(),
        }
    }

    fn set_start(&mut self, at: usize) {
        if let Some(FrameBytes::Local { start, .. }) = Rc::get_mut(self) {
            *start = at;
        }
    }
}

impl Recyclable for Arc<Vec<u8>> {
    fn empty() -> Self {
        Arc::new(Vec::new())
    }

    fn buffer_if_unique(&mut self) -> Option<&mut Vec<u8>> {
        Arc::get_mut(self)
    }

    fn capacity(&self) -> usize {
        Vec::capacity(self)
    }
}

#[derive(Debug)]
pub struct Pool<T> {
    kept: VecDeque<T>,
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Self { kept: VecDeque::new() }
    }
}

impl<T: Recyclable> Pool<T> {
    /// A handle that nothing else holds, its buffer filled by `write` (which gets it empty
    /// and returns where the frame starts in it), and that start. The pool keeps a handle to
    /// refill the buffer once everyone else has let go.
    pub fn fill(&mut self, write: impl FnOnce(&mut Vec<u8>) -> usize) -> (T, usize) {
        let oldest_free = self.kept.front_mut().is_some_and(|h| h.buffer_if_unique().is_some());
        let recycled = if oldest_free { self.kept.pop_front() } else { None };
        let mut handle = recycled.unwrap_or_else(T::empty);
        let Some(bytes) = handle.buffer_if_unique() else {
            unreachable!("a recycled or new handle is the only one")
        };
        bytes.clear();
        let start = write(bytes);
        handle.set_start(start);
        if handle.capacity() <= POOL_BUFFER_BYTES_MAX {
            if self.kept.len() == POOL_BUFFERS {
                self.kept.pop_front(); // still held somewhere: freed once let go
            }
            self.kept.push_back(handle.clone());
        }
        (handle, start)
    }

    /// Handles kept for reuse.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

impl Pool<Frame> {
    /// A shard-local frame written by `write` (see [`Pool::fill`]).
    pub fn frame(&mut self, write: impl FnOnce(&mut Vec<u8>) -> usize) -> Frame {
        self.fill(write).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::outbound::OutQueue;

    fn frame(pool: &mut Pool<Frame>, text: &[u8]) -> Frame {
        pool.frame(|bytes| {
            bytes.extend_from_slice(b"..");
            bytes.extend_from_slice(text);
            2
        })
    }

    #[test]
    fn a_frame_every_queue_has_sent_is_refilled() {
        let mut pool = Pool::default();
        let mut queue = OutQueue::default();
        let first = frame(&mut pool, b"first");
        assert_eq!(first.as_slice(), b"first");
        queue.push(&first, 1 << 20);
        let at = Rc::as_ptr(&first);
        drop(first);
        // Still queued: not reused.
        let second = frame(&mut pool, b"second");
        assert_ne!(Rc::as_ptr(&second), at);
        assert_eq!(queue.head(), Some(&b"first"[..]));
        queue.advance(5);
        drop(second);
        // Sent: the oldest frame is refilled.
        let third = frame(&mut pool, b"third");
        assert_eq!(Rc::as_ptr(&third), at);
        assert_eq!(third.as_slice(), b"third");
    }

    #[test]
    fn a_shared_buffer_comes_back_when_the_last_thread_lets_go() {
        let mut pool: Pool<Arc<Vec<u8>>> = Pool::default();
        let write = |text: &'static [u8]| {
            move |bytes: &mut Vec<u8>| {
                bytes.extend_from_slice(text);
                0
            }
        };
        let (first, _) = pool.fill(write(b"first"));
        let at = Arc::as_ptr(&first);
        let elsewhere = std::thread::spawn(move || first.to_vec());
        let (second, _) = pool.fill(write(b"second"));
        assert_eq!(elsewhere.join().unwrap(), b"first");
        drop(second);
        let (third, _) = pool.fill(write(b"third"));
        assert_eq!((Arc::as_ptr(&third), third.as_slice()), (at, &b"third"[..]));
    }

    #[test]
    fn the_pool_stays_bounded_when_frames_stay_held() {
        let mut pool = Pool::default();
        let held: Vec<Frame> =
            (0..POOL_BUFFERS * 3).map(|i| frame(&mut pool, &[i as u8])).collect();
        assert_eq!(pool.len(), POOL_BUFFERS);
        for (i, frame) in held.iter().enumerate() {
            assert_eq!(frame.as_slice(), [i as u8], "a held frame was overwritten");
        }
        let big = pool.frame(|bytes| {
            bytes.resize(POOL_BUFFER_BYTES_MAX + 1, b'x');
            0
        });
        assert!(!pool.kept.iter().any(|f| Rc::ptr_eq(f, &big)), "a large buffer was kept");
    }
}
