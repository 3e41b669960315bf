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

    /// Writes as much as the socket takes with one `sendmsg`. Returns the bytes written;
    /// `WouldBlock` when the socket is full.
    ///
    /// Small frames are copied into the thread's gather buffer and sent as one run: the
    /// kernel's cost per iovec is far higher than a copy of a few hundred bytes (profiled:
    /// with one iovec per 200-byte frame, `_copy_from_iter` took a quarter of the core).
    /// Large frames are sent from where they are, without a copy.
    pub fn send_to(&mut self, fd: RawFd) -> io::Result<usize> {
        GATHER.with(|gather| {
            let mut gather = gather.borrow_mut();
            // Each piece is a run of gathered frames or one frame sent in place.
            let mut pieces = [Piece::InPlace(&[][..]); IOVECS_MAX];
            let mut count = 0;
            let mut gathered = 0;
            for (i, frame) in self.frames.iter().enumerate() {
                let bytes = frame.as_slice();
                let bytes = if i == 0 { &bytes[self.head_sent..] } else { bytes };
                let small = bytes.len() <= GATHER_FRAME_BYTES_MAX;
                if small && gathered + bytes.len() > GATHER_BYTES {
                    break; // the gather buffer is full
                }
                let extends_run =
                    small && count > 0 && matches!(pieces[count - 1], Piece::Gathered { .. });
                if !extends_run {
                    if count == IOVECS_MAX {
                        break;
                    }
                    pieces[count] = if small {
                        Piece::Gathered { start: gathered, end: gathered }
                    } else {
                        Piece::InPlace(bytes)
                    };
                    count += 1;
                }
                if small {
                    gather[gathered..gathered + bytes.len()].copy_from_slice(bytes);
                    gathered += bytes.len();
                    if let Piece::Gathered { end, .. } = &mut pieces[count - 1] {
                        *end = gathered;
                    }
                }
            }
            if count == 0 {
                return Ok(0);
            }
            let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; IOVECS_MAX];
            for (v, piece) in iov.iter_mut().zip(&pieces[..count]) {
                let bytes = match piece {
                    Piece::Gathered { start, end } => &gather[*start..*end],
                    Piece::InPlace(bytes) => bytes,
                };
                *v = libc::iovec {
                    iov_base: bytes.as_ptr() as *mut libc::c_void,
                    iov_len: bytes.len(),
                };
            }
            let n = sendmsg(fd, &iov[..count])?;
            self.advance(n);
            Ok(n)
        })
    }
}

/// Part of one `sendmsg`.
#[derive(Clone, Copy)]
enum Piece<'a> {
    /// Frames copied into the gather buffer, at `start..end`.
    Gathered { start: usize, end: usize },
    /// One large frame, sent from where it is.
    InPlace(&'a [u8]),
}

/// Frames up to this size are copied into the gather buffer; larger ones are sent in place.
const GATHER_FRAME_BYTES_MAX: usize = 2 << 10;

/// The gather buffer: one per thread (so one per shard), reused by every connection's writes.
const GATHER_BYTES: usize = 64 << 10;

thread_local! {
    static GATHER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; GATHER_BYTES]);
}

/// One non-blocking vectored send; never raises SIGPIPE.
fn sendmsg(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid value (no name, no
    // control data).
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = iov.as_ptr() as *mut libc::iovec;
    header.msg_iovlen = iov.len() as _;
    // SAFETY: `header` points at `iov`, whose entries point into frames the queue keeps alive
    // or into the thread's gather buffer, which the caller holds borrowed, for the duration of
    // the call; the kernel only reads them. `fd` is the connection's open
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

    /// Sends everything in `frames` through a socket pair and returns what arrived.
    fn round_trip(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into `fds`, which we own and close below.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        let total: usize = frames.iter().map(Vec::len).sum();
        let mut q = OutQueue::default();
        for f in frames {
            q.push(&frame(f), usize::MAX);
        }
        let mut got = vec![0u8; total];
        let mut read = 0;
        while read < total {
            if !q.is_empty() {
                match q.send_to(fds[0]) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("send: {e}"),
                }
            }
            // SAFETY: reading into the unfilled tail of `got`, which is valid for that length.
            let n = unsafe {
                libc::recv(
                    fds[1],
                    got[read..].as_mut_ptr().cast(),
                    total - read,
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                read += n as usize;
            }
        }
        assert!(q.is_empty());
        // SAFETY: closing the descriptors socketpair gave us.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        got
    }

    #[test]
    fn small_frames_arrive_whole_and_in_order() {
        let frames: Vec<Vec<u8>> =
            (0..1000u32).map(|i| vec![i as u8; 3 + (i as usize % 200)]).collect();
        assert_eq!(round_trip(&frames), frames.concat());
    }

    #[test]
    fn large_and_small_frames_mixed_arrive_whole_and_in_order() {
        let frames: Vec<Vec<u8>> = (0..300u32)
            .map(|i| {
                let len = match i % 7 {
                    0 => 70_000,
                    1 => 2 << 10,
                    2 => (2 << 10) + 1,
                    _ => 100,
                };
                (0..len).map(|b| (b as u32 ^ i) as u8).collect()
            })
            .collect();
        assert_eq!(round_trip(&frames), frames.concat());
    }
}
