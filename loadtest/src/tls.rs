//! The client side of TLS for `wss://` URLs: the rustls configuration (the CA certificates to
//! trust and the server name to check), built once and shared by every connection.
//!
//! The connections drive their rustls sessions inside the worker's event loop (see `conn`):
//! ciphertext read from the socket is fed to rustls and the plaintext goes to the same frame
//! parser a plain connection uses; outgoing frames are handed to rustls and its records are
//! written with one vectored `write()`. Everything above the socket is the same for both.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// What every TLS connection of a run is opened with.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("server_name", &self.server_name).finish()
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &ClientTls) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.server_name == other.server_name
    }
}

impl Eq for ClientTls {}

impl ClientTls {
    /// Trusts the PEM certificates in `ca` (test brokers use self-signed certificates) and
    /// checks the broker's certificate against `server_name`.
    pub fn new(ca: &Path, server_name: &str) -> Result<ClientTls, String> {
        let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
        let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: not a PEM certificate file: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate in it", ca.display()));
        }
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("{}: certificate not usable as a root: {e}", ca.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls { config: Arc::new(config), server_name: server_name_of(server_name)? })
    }

    /// A new client session; its ClientHello is ready to be written.
    pub fn session(&self) -> Result<ClientConnection, rustls::Error> {
        ClientConnection::new(Arc::clone(&self.config), self.server_name.clone())
    }

    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }
}

/// An IP address (with or without IPv6 brackets) becomes an IP-address server name, anything
/// else a DNS name.
pub fn server_name_of(name: &str) -> Result<ServerName<'static>, String> {
    let bare = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(bare.to_string())
        .map_err(|_| format!("`{name}` is not a valid TLS server name"))
}

/// The negotiated protocol version and cipher suite, for the report (`TLSv1_3
/// TLS13_AES_256_GCM_SHA384`).
pub fn describe(session: &ClientConnection) -> Option<String> {
    let version = session.protocol_version()?;
    let suite = session.negotiated_cipher_suite()?;
    Some(format!("{version:?} {:?}", suite.suite()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert!(matches!(server_name_of("127.0.0.1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name_of("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name_of("::1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name_of("broker.example"), Ok(ServerName::DnsName(_))));
        assert!(server_name_of("not a name").is_err());
    }

    #[test]
    fn missing_or_empty_ca_file_is_an_error() {
        let err = ClientTls::new(Path::new("/nonexistent/ca.pem"), "127.0.0.1").unwrap_err();
        assert!(err.contains("cannot read"), "{err}");
        let path = std::env::temp_dir().join(format!("lt-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&path, b"nothing here\n").unwrap();
        let err = ClientTls::new(&path, "127.0.0.1").unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(err.contains("no certificate"), "{err}");
    }
}
