//! TLS (`--tls-listen`) with rustls: the certificate set-up, and the two places where a TLS
//! connection's bytes differ from a plain one's.
//!
//! Reading: ciphertext comes into a per-shard buffer, rustls decrypts it, and the plaintext
//! goes where a plain read would have put it (the scratch buffer, or behind a carried-over
//! frame), so everything above the socket is the same for both. Writing: queued frames are
//! encrypted in one batch and written through glommio; this path copies (encryption must),
//! while the plain path keeps its gathered `sendmsg`.
//!
//! The TLS session is shared by the connection's reader and writer tasks: both borrow it only
//! inside a poll or between awaits, never across one.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};

use crate::limits::{CIPHER_BATCH_BYTES, CIPHER_READ_BYTES};
use crate::shard::connection::Connection;

/// Loads a PEM certificate chain and private key into a server configuration.
pub(crate) fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let certs: Vec<_> = rustls_pemfile::certs(&mut &read(cert)?[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let key = rustls_pemfile::private_key(&mut &read(key)?[..])
        .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no private key in it", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate and key do not work together: {e}"))?;
    Ok(Arc::new(config))
}

/// A connection's TLS session.
pub(crate) struct Tls {
    session: RefCell<ServerConnection>,
    /// Ciphertext read from the socket that rustls has not taken yet (usually empty).
    unread: RefCell<Vec<u8>>,
}

impl Tls {
    pub(crate) fn new(config: &Arc<ServerConfig>) -> Result<Rc<Self>, rustls::Error> {
        let mut session = ServerConnection::new(config.clone())?;
        session.set_buffer_limit(Some(CIPHER_BATCH_BYTES));
        Ok(Rc::new(Self { session: RefCell::new(session), unread: RefCell::new(Vec::new()) }))
    }

    /// Plaintext into `buf`: what rustls already decrypted, or else ciphertext fed to rustls
    /// (left over from an earlier read, or one read from the socket into `cipher`) and
    /// decrypted. `Ok(0)` is the end of the stream. Wakes the writer when the handshake has
    /// something to send.
    ///
    /// rustls refuses ciphertext while decrypted plaintext waits to be taken (its buffer is
    /// bounded), so ciphertext is fed one `read_tls` at a time, each only after the plaintext
    /// before it was handed out; what it did not take waits in `unread`.
    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        stream: &RefCell<TcpStream>,
        cipher: &mut [u8],
        buf: &mut [u8],
        conn: &Connection,
    ) -> Poll<io::Result<usize>> {
        let mut session = self.session.borrow_mut();
        let mut unread = self.unread.borrow_mut();
        loop {
            match session.reader().read(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without close_notify: treat it as the end.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(0)),
                Err(e) => return Poll::Ready(Err(e)),
            }
            if unread.is_empty() {
                let n = match Pin::new(&mut *stream.borrow_mut()).poll_read(cx, cipher) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) => return Poll::Ready(Ok(0)),
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                };
                let mut fed = &cipher[..n];
                session.read_tls(&mut fed)?;
                unread.extend_from_slice(fed);
            } else {
                let mut fed = &unread[..];
                session.read_tls(&mut fed)?;
                let taken = unread.len() - fed.len();
                unread.drain(..taken);
                if unread.is_empty() && unread.capacity() > CIPHER_READ_BYTES {
                    *unread = Vec::new();
                }
            }
            if let Err(e) = session.process_new_packets() {
                // rustls queued an alert for the peer; let the writer send it.
                conn.wake_writer();
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
            if session.wants_write() {
                conn.wake_writer();
            }
        }
    }

    fn wants_write(&self) -> bool {
        self.session.borrow().wants_write()
    }
}

/// The writer of a TLS connection: encrypts what is queued in batches and writes it, until
/// the connection is closed.
pub(crate) async fn write_loop(conn: Rc<Connection>, stream: Rc<RefCell<TcpStream>>, tls: Rc<Tls>) {
    let mut cipher = Vec::new();
    loop {
        poll_fn(|cx| {
            if conn.queue().is_empty() && !tls.wants_write() {
                conn.park_writer(cx.waker());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        let closing_done = {
            let mut session = tls.session.borrow_mut();
            let mut out = conn.queue();
            while let Some(head) = out.head() {
                match session.writer().write(head) {
                    Ok(0) | Err(_) => break, // rustls's plaintext buffer is full
                    Ok(n) => out.advance(n),
                }
            }
            let done = out.is_empty() && conn.is_closing();
            if done {
                session.send_close_notify();
            }
            cipher.clear();
            while session.wants_write() {
                if session.write_tls(&mut cipher).is_err() {
                    break;
                }
            }
            done
        };
        if write_all(&stream, &cipher).await.is_err() {
            return conn.writer_done(true);
        }
        conn.wrote(cipher.len());
        if cipher.capacity() > 2 * CIPHER_BATCH_BYTES {
            cipher = Vec::new();
        }
        if closing_done {
            let _ = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_close(cx)).await;
            return conn.writer_done(false);
        }
    }
}

async fn write_all(stream: &RefCell<TcpStream>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_write(cx, bytes)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}
