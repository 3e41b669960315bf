//! The cluster's command-line flags, as one clap group for `Config` to flatten.
//!
//! What it is: `--cluster-nats`, `--cluster-nats-creds`, `--node-name`, `--cluster-prefix`,
//! their environment names and their validation. What it is not: the bridge's tuning (queue
//! sizes, timeouts), which has defaults in [`super::bridge::BridgeConfig`].
//!
//! Invariants: without `--cluster-nats` the cluster is off ([`ClusterFlags::enabled`]) and no
//! NATS code runs. A URL may hold `user:password@`; nothing here or in the bridge logs a URL
//! without [`redact`] first, and clap hides the environment values in `--help`.

use std::path::PathBuf;

use super::subjects;

#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
#[command(next_help_heading = "Cluster")]
pub struct ClusterFlags {
    /// Join a cluster through this NATS server (`nats://` or `tls://`, optionally
    /// `user:password@`); repeat, or separate with commas, for several servers of one NATS
    /// cluster. Without it the broker runs alone.
    #[arg(
        long = "cluster-nats",
        env = "MIDDLEMAN_CLUSTER_NATS",
        value_name = "URL",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = parse_nats_url
    )]
    pub nats: Vec<String>,

    /// A NATS credentials file (JWT and NKey seed) to authenticate with.
    #[arg(long = "cluster-nats-creds", env = "MIDDLEMAN_CLUSTER_NATS_CREDS", value_name = "FILE")]
    pub creds: Option<PathBuf>,

    /// This node's name, unique in the cluster (default: host name and process id). A second
    /// node with a live node's name is refused at start.
    #[arg(long = "node-name", env = "MIDDLEMAN_NODE_NAME", value_name = "NAME", value_parser = parse_node_name)]
    pub node_name: Option<String>,

    /// The first token of every NATS subject and KV bucket of this cluster
    /// (`[A-Za-z0-9_-]`), so several clusters can share one NATS.
    #[arg(
        long = "cluster-prefix",
        env = "MIDDLEMAN_CLUSTER_PREFIX",
        value_name = "P",
        default_value = "mm",
        value_parser = parse_prefix
    )]
    pub prefix: String,
}

impl ClusterFlags {
    pub(crate) fn enabled(&self) -> bool {
        !self.nats.is_empty()
    }

    /// `--node-name`, or the host name and process id.
    pub(crate) fn node_name(&self) -> String {
        self.node_name.clone().unwrap_or_else(default_node_name)
    }
}

fn parse_nats_url(text: &str) -> Result<String, String> {
    let rest = text
        .strip_prefix("nats://")
        .or_else(|| text.strip_prefix("tls://"))
        .ok_or_else(|| format!("`{}`: a NATS URL starts with nats:// or tls://", redact(text)))?;
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    if host.is_empty() || host.contains('/') {
        return Err(format!("`{}`: expected nats://[user:password@]host[:port]", redact(text)));
    }
    Ok(text.to_owned())
}

fn parse_node_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 200 || text.chars().any(char::is_control) {
        Err("a node name is 1 to 200 characters, none of them control characters".into())
    } else {
        Ok(text.to_owned())
    }
}

fn parse_prefix(text: &str) -> Result<String, String> {
    if subjects::valid_prefix(text) {
        Ok(text.to_owned())
    } else {
        Err(format!("`{text}`: a cluster prefix is 1 to 64 characters of A-Z a-z 0-9 _ -"))
    }
}

/// `url` with any `user:password@` replaced by `***@`, for logs and errors.
pub(crate) fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    match rest.rsplit_once('@') {
        Some((_, host)) if scheme.is_empty() => format!("***@{host}"),
        Some((_, host)) => format!("{scheme}://***@{host}"),
        None => url.to_owned(),
    }
}

fn default_node_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for `buf.len()` bytes; gethostname writes at most that many and
    // we read only up to the first NUL inside the buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "middleman".to_owned()
    };
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        cluster: ClusterFlags,
    }

    fn parse(args: &[&str]) -> Result<ClusterFlags, String> {
        Cli::try_parse_from(std::iter::once("middleman").chain(args.iter().copied()))
            .map(|c| c.cluster)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn off_by_default() {
        let flags = parse(&[]).unwrap();
        assert!(!flags.enabled());
        assert_eq!(flags.prefix, "mm");
        assert!(flags.node_name().ends_with(&format!("-{}", std::process::id())));
    }

    #[test]
    fn urls_repeat_and_split_on_commas() {
        let flags = parse(&[
            "--cluster-nats",
            "nats://a:4222,tls://u:p@b:4443",
            "--cluster-nats",
            "nats://c",
            "--node-name",
            "n1",
            "--cluster-prefix",
            "prod-eu",
        ])
        .unwrap();
        assert!(flags.enabled());
        assert_eq!(flags.nats, ["nats://a:4222", "tls://u:p@b:4443", "nats://c"]);
        assert_eq!(flags.node_name(), "n1");
        assert_eq!(flags.prefix, "prod-eu");
    }

    #[test]
    fn bad_values_are_refused_without_leaking_passwords() {
        // clap itself echoes the value it refused; our part of the message never does.
        let err = parse_nats_url("http://user:secret@host").unwrap_err();
        assert!(err.contains("nats:// or tls://") && !err.contains("secret"), "{err}");
        let err = parse_nats_url("nats://user:secret@").unwrap_err();
        assert!(err.contains("***@") && !err.contains("secret"), "{err}");
        assert!(parse(&["--cluster-nats", "nats.example:4222"]).is_err());
        assert!(parse(&["--cluster-prefix", "a.b"]).unwrap_err().contains("cluster prefix"));
        assert!(parse(&["--node-name", ""]).is_err());
    }

    #[test]
    fn redact_hides_user_and_password() {
        assert_eq!(redact("nats://u:p@h:1"), "nats://***@h:1");
        assert_eq!(redact("tls://h:1"), "tls://h:1");
        assert_eq!(redact("u:p@h"), "***@h");
    }
}
