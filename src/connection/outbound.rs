//! Encoded server frames and the bounded per-connection outbound queue.
//!
//! A delivered message is encoded once per shard (WebSocket header + rewritten head + body)
//! into a [`Frame`]; every subscriber's [`OutQueue`] holds a handle to the same bytes. Pushing
//! a handle is a reference-count increment: the fan-out path does not allocate per subscriber
//! once a queue's ring buffer has reached its working size.
//!
//! The queue is drained with one vectored `sendmsg` of up to [`IOVECS_MAX`] frames, which is
//! the lever that matters for fan-out throughput (see `docs/ARCHITECTURE.md`).
//!
//! Invariant: `bytes` is the number of unsent bytes in the queue, counting only the unsent part
//! of the head frame; `head_sent < frames[0].len()` whenever the queue is non-empty.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;

/// Frames per `sendmsg`. IOV_MAX is 1024; 64 frames of a typical fan-out message are ~14 KB,
/// enough to amortise the syscall (loopback measurements in `../shared/notes`).
pub const IOVECS_MAX: usize = 64;

/// The bytes of one encoded server frame.
#[derive(Debug)]
pub enum FrameBytes {
    /// Encoded on another shard and shared across threads; `start` skips unused header room.
    Shared { bytes: Arc<Vec<u8>>, start: usize },
    /// Encoded on this shard.
    Local { bytes: Vec<u8>, start: usize },
}

impl FrameBytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Self::Shared { bytes, start } => &bytes[*start..],
            Self::Local { bytes, start } => &bytes[*start..],
        }
    }
}

/// A shard-local handle to an encoded frame: cloning it is a non-atomic increment.
pub type Frame = Rc<FrameBytes>;

/// What [`OutQueue::push`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The queue would pass its byte budget; the frame was not queued.
    OverBudget,
}

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

    /// Unsent bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Queues `frame` unless the unsent bytes would pass `bytes_max`.
    pub fn push(&mut self, frame: &Frame, bytes_max: usize) -> Push {
        let len = frame.as_slice().len();
        if self.bytes + len > bytes_max && !self.frames.is_empty() {
            return Push::OverBudget;
        }
        self.push_unbounded(frame.clone());
        Push::Queued
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
        if self.frames.capacity() > 256 {
            self.frames = VecDeque::new();
        }
    }

    /// Writes as much as the socket takes with one `sendmsg` over up to [`IOVECS_MAX`] frames.
    /// Returns the bytes written; `WouldBlock` when the socket is full.
    pub fn send_to(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; IOVECS_MAX];
        let mut count = 0;
        for (i, frame) in self.frames.iter().take(IOVECS_MAX).enumerate() {
            let bytes = frame.as_slice();
            let bytes = if i == 0 { &bytes[self.head_sent..] } else { bytes };
            iov[i] =
                libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
            count += 1;
        }
        if count == 0 {
            return Ok(0);
        }
        let n = sendmsg(fd, &iov[..count])?;
        self.advance(n);
        Ok(n)
    }
}

/// One non-blocking vectored send; never raises SIGPIPE.
fn sendmsg(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid value (no name, no
    // control data).
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = iov.as_ptr() as *mut libc::iovec;
    header.msg_iovlen = iov.len() as _;
    // SAFETY: `header` points at `iov`, whose entries point into frames the queue keeps alive
    // for the duration of the call; the kernel only reads them. `fd` is the connection's open
    // socket, owned by the connection for as long as its writer runs.
    let sent = unsafe { libc::sendmsg(fd, &header, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: &[u8]) -> Frame {
        Rc::new(FrameBytes::Local { bytes: bytes.to_vec(), start: 0 })
    }

    #[test]
    fn push_respects_the_byte_budget_but_never_refuses_an_empty_queue() {
        let mut q = OutQueue::default();
        assert_eq!(q.push(&frame(&[0; 10]), 5), Push::Queued, "an empty queue takes any frame");
        assert_eq!(q.push(&frame(&[0; 1]), 10), Push::OverBudget);
        assert_eq!(q.bytes(), 10);
    }

    #[test]
    fn advance_walks_partial_frames() {
        let mut q = OutQueue::default();
        q.push(&frame(b"abc"), 100);
        q.push(&frame(b"defg"), 100);
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
            q.push(&frame(f), 100);
        }
        q.advance(1);
        q.discard_unstarted();
        assert_eq!(q.head(), Some(&b"bc"[..]));
        assert_eq!(q.bytes(), 2);
        q.advance(2);
        q.push(&frame(b"xy"), 100);
        q.discard_unstarted();
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn send_to_writes_all_frames_through_a_socket_pair() {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into `fds`, which we own and close below.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        let mut q = OutQueue::default();
        for i in 0..100u8 {
            q.push(&frame(&[i; 3]), usize::MAX);
        }
        while !q.is_empty() {
            q.send_to(fds[0]).expect("send");
        }
        let mut got = vec![0u8; 300];
        let mut read = 0;
        while read < 300 {
            // SAFETY: reading into the unfilled tail of `got`, which is valid for that length.
            let n = unsafe { libc::read(fds[1], got[read..].as_mut_ptr().cast(), 300 - read) };
            assert!(n > 0);
            read += n as usize;
        }
        let want: Vec<u8> = (0..100u8).flat_map(|i| [i; 3]).collect();
        assert_eq!(got, want);
        // SAFETY: closing the descriptors socketpair gave us.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
