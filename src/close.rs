//! Why a connection ends, and everything that follows from it in one place: the close frame
//! (code and reason text), the counter it bumps and the log line it writes.
//!
//! Every site that ends a connection names a [`CloseReason`]; none writes a close code, a
//! reason text or a counter of its own. (rustls's mapping of its errors to TLS alerts is the
//! model: one enum, one `match` per consequence.)
//!
//! Invariant: a reason that has a close frame maps to a code that may appear on the wire
//! ([`CloseCode::is_allowed`]), with a reason text that fits a close frame.

use crate::protocol::ws::{CloseCode, WsError};

/// Why a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Its queue stayed over `--max-pending-bytes` after the runtime wrote what the socket took.
    SlowConsumer,
    /// No key within `--auth-timeout` of connecting.
    AuthTimeout,
    /// The first message was not a known key.
    BadKey,
    /// Silent for two `--ping-interval`s.
    PingTimeout,
    /// The broker is shutting down.
    GoingAway,
    /// The peer broke RFC 6455 (1002, 1007, 1009).
    Protocol(WsError),
    /// The peer sent a close frame; its code is echoed (1000 when it gave none).
    PeerClosed(Option<u16>),
    /// The upgrade was answered with an HTTP error: no WebSocket, so no close frame.
    Rejected,
    /// The socket failed (reset, broken pipe): nothing more can be sent.
    SocketFailed,
}

/// The counters a close can bump (besides none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCounter {
    /// `slow_consumers_total{action="closed"}`.
    SlowConsumer,
    /// `auth_failures_total`: bad keys and auth timeouts.
    AuthFailure,
    /// `protocol_errors_total`.
    ProtocolError,
}

impl CloseReason {
    /// The close frame to send: its code and reason text. `None`: no close frame (the
    /// connection never became a WebSocket, or its socket is gone).
    pub fn frame(self) -> Option<(CloseCode, &'static str)> {
        Some(match self {
            Self::SlowConsumer => (CloseCode::POLICY_VIOLATION, "slow consumer"),
            Self::AuthTimeout => (CloseCode::POLICY_VIOLATION, "auth timeout"),
            Self::BadKey => (CloseCode::POLICY_VIOLATION, "bad key"),
            Self::PingTimeout => (CloseCode::POLICY_VIOLATION, "ping timeout"),
            Self::GoingAway => (CloseCode::GOING_AWAY, "going away"),
            Self::Protocol(e) => (e.close_code(), e.reason()),
            // RFC 6455 §5.5.1: echo the peer's code. The decoder only lets allowed codes through.
            Self::PeerClosed(code) => (code.map_or(CloseCode::NORMAL, CloseCode), ""),
            Self::Rejected | Self::SocketFailed => return None,
        })
    }

    /// The counter this close bumps, if any.
    pub fn counter(self) -> Option<CloseCounter> {
        match self {
            Self::SlowConsumer => Some(CloseCounter::SlowConsumer),
            Self::AuthTimeout | Self::BadKey => Some(CloseCounter::AuthFailure),
            Self::Protocol(_) => Some(CloseCounter::ProtocolError),
            Self::PingTimeout
            | Self::GoingAway
            | Self::PeerClosed(_)
            | Self::Rejected
            | Self::SocketFailed => None,
        }
    }

    /// Writes the log line for this close (none for the ordinary ends).
    pub fn log(self, cid: &dyn std::fmt::Display, peer: &dyn std::fmt::Display) {
        match self {
            Self::SlowConsumer => tracing::warn!(cid = %cid, peer = %peer, "slow consumer: closed"),
            Self::AuthTimeout => tracing::info!(cid = %cid, peer = %peer, "auth timeout"),
            Self::BadKey => tracing::info!(cid = %cid, peer = %peer, "bad key"),
            Self::PingTimeout => {
                tracing::info!(cid = %cid, peer = %peer, "no sign of life: closed")
            }
            Self::Protocol(e) => {
                tracing::info!(cid = %cid, peer = %peer, reason = e.reason(), "protocol error")
            }
            Self::GoingAway | Self::PeerClosed(_) | Self::Rejected | Self::SocketFailed => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_close_frame_may_go_on_the_wire() {
        let reasons = [
            CloseReason::SlowConsumer,
            CloseReason::AuthTimeout,
            CloseReason::BadKey,
            CloseReason::PingTimeout,
            CloseReason::GoingAway,
            CloseReason::Protocol(WsError::Unmasked),
            CloseReason::PeerClosed(None),
            CloseReason::PeerClosed(Some(4000)),
        ];
        for reason in reasons {
            let (code, text) = reason.frame().expect("a WebSocket close");
            assert!(code.is_allowed(), "{reason:?}: {code:?}");
            assert!(text.len() <= crate::protocol::ws::CLOSE_REASON_BYTES_MAX, "{reason:?}");
        }
        assert_eq!(CloseReason::Rejected.frame(), None);
        assert_eq!(CloseReason::SocketFailed.frame(), None);
    }
}
