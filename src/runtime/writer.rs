//! The writer: drains a connection's outbound queue into its socket.
//!
//! A plain connection's queue goes out with `sendmsg` on the raw socket (small frames gathered
//! into one buffer, large ones sent in place; glommio has no vectored write). Only when the
//! socket is full does the writer go through glommio, writing part of the head frame, which is
//! also how it waits for writability. TLS connections write through [`super::tls`] instead.
//!
//! Two callers write: the connection's writer task ([`write_loop`]), and the runtime after a
//! batch, for a connection that went over its budget ([`write_now`]) before the shard judges
//! it. Both go through [`send_queue`].
//!
//! Closing: the writer sends everything up to the close frame, then shuts down its side.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use futures_lite::AsyncWrite;
use glommio::net::TcpStream;

use crate::limits::{GATHER_BYTES, GATHER_FRAME_BYTES_MAX, IOVECS_MAX};
use crate::shard::connection::Connection;
use crate::shard::outbound::OutQueue;

/// Drains the outbound queue until the connection is closed.
pub(crate) async fn write_loop(conn: Rc<Connection>, stream: Rc<RefCell<TcpStream>>, fd: RawFd) {
    loop {
        poll_fn(|cx| {
            if conn.queue().is_empty() {
                conn.park_writer(cx.waker());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        loop {
            let sent = send_queue(&mut conn.queue(), fd);
            if let Ok(n) = sent {
                conn.wrote(n);
            }
            match sent {
                Ok(_) if conn.queue().is_empty() => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The socket is full: let glommio wait for room, and take part of the
                    // head frame while at it.
                    let written = poll_fn(|cx| {
                        let out = conn.queue();
                        let head = out.head().unwrap_or_default();
                        Pin::new(&mut *stream.borrow_mut()).poll_write(cx, head)
                    })
                    .await;
                    match written {
                        Ok(n) => {
                            conn.queue().advance(n);
                            conn.wrote(n);
                        }
                        Err(_) => return conn.writer_done(true),
                    }
                }
                Err(_) => return conn.writer_done(true),
            }
        }
        if conn.is_closing() {
            // Everything up to and including the close frame is out: send FIN, so the peer
            // sees the end after the close frame.
            let _ = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_close(cx)).await;
            return conn.writer_done(false);
        }
    }
}

/// Writes what the socket takes right now, without waiting. Called by the runtime after a
/// batch for a connection over its budget, so it is judged by what its socket refuses, not
/// by how much one batch queued. Errors (the peer is gone) are the writer task's to notice.
pub(crate) fn write_now(conn: &Connection, fd: RawFd) {
    if conn.is_closed() {
        return;
    }
    loop {
        let sent = send_queue(&mut conn.queue(), fd);
        match sent {
            Ok(n) if n > 0 => conn.wrote(n),
            _ => return,
        }
        if conn.queue().is_empty() {
            return;
        }
    }
}

/// Writes as much of `out` as the socket takes with one `sendmsg`. Returns the bytes written;
/// `WouldBlock` when the socket is full.
///
/// Small frames are copied into the thread's gather buffer and sent as one run: the kernel's
/// cost per iovec is far higher than a copy of a few hundred bytes (profiled: with one iovec
/// per 200-byte frame, `_copy_from_iter` took a quarter of the core). Large frames are sent
/// from where they are, without a copy.
pub(crate) fn send_queue(out: &mut OutQueue, fd: RawFd) -> io::Result<usize> {
    GATHER.with(|gather| {
        let mut gather = gather.borrow_mut();
        // Each piece is a run of gathered frames or one frame sent in place.
        let mut pieces = [Piece::InPlace(&[][..]); IOVECS_MAX];
        let mut count = 0;
        let mut gathered = 0;
        for bytes in out.unsent() {
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
            *v =
                libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
        }
        let n = sendmsg(fd, &iov[..count])?;
        out.advance(n);
        Ok(n)
    })
}

/// Part of one `sendmsg`.
#[derive(Clone, Copy)]
enum Piece<'a> {
    /// Frames copied into the gather buffer, at `start..end`.
    Gathered { start: usize, end: usize },
    /// One large frame, sent from where it is.
    InPlace(&'a [u8]),
}

thread_local! {
    /// The gather buffer: one per thread (so one per shard), reused by every connection.
    static GATHER: RefCell<Vec<u8>> = RefCell::new(vec![0; GATHER_BYTES]);
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
    // the call; the kernel only reads them. `fd` is the connection's open socket: the reader
    // task owns the stream and removes the descriptor from the runtime's table before it drops
    // it, and both callers (the writer task, `write_now`) run on the same thread as the reader.
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
    use crate::shard::outbound::{Frame, FrameBytes};

    fn frame(bytes: &[u8]) -> Frame {
        FrameBytes::local(bytes.to_vec(), 0)
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
            q.push_unbounded(frame(f));
        }
        let mut got = vec![0u8; total];
        let mut read = 0;
        while read < total {
            if !q.is_empty() {
                match send_queue(&mut q, fds[0]) {
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
