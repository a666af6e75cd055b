//! `trackshift send`: a file or directory to a gateway, as a script would use it: the
//! gateway named by host or address (default port 4433), permanent errors at once, the
//! first connection bounded by `--connect-timeout`, `--json` output, an exit code per
//! class of failure (`crate::exit`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use trackshift_crypto::{DeliveryStatus, Receipt};
use trackshift_engine::connectors::destination::{self, Destination};
use trackshift_engine::sender::SendConfig;
use trackshift_engine::tls::ServerTrust;

use crate::transfer::{gbps, send_with_progress, write_documents};

/// The gateway's port when `--to` names none (`serve --listen`'s default).
pub const DEFAULT_PORT: u16 = 4433;

/// Options of `trackshift send`.
#[derive(Args)]
pub struct SendArgs {
    /// File or directory to send.
    path: PathBuf,
    /// Gateway: HOST[:PORT], IPv4[:PORT] or [IPv6][:PORT] (default port 4433).
    #[arg(long)]
    to: String,
    /// Destination at the gateway: `file:///DIR`, `s3://BUCKET/PREFIX`,
    /// `az://CONTAINER/PREFIX`, `sftp://...`, `ftps://...` or `null://` (the gateway holds
    /// the credentials). Repeat it to fan out: the data is sent once and written to every
    /// destination, each with its own receipt.
    #[arg(long, required = true)]
    dest: Vec<String>,
    /// Pin the gateway certificate by its SHA-256 fingerprint (printed by `serve`).
    #[arg(long, conflicts_with = "ca")]
    fingerprint: Option<String>,
    /// Trust gateway certificates issued by this CA (PEM).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Name on the gateway certificate (default: the host of --to when it is a name,
    /// `localhost` when it is an address).
    #[arg(long)]
    server_name: Option<String>,
    /// Tenant token (better: the TRACKSHIFT_TOKEN environment variable or --token-file).
    #[arg(long, env = "TRACKSHIFT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the tenant token.
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Chunk size (power of two, 1KiB to 1GiB; default 4MiB, 8MiB for s3:// whose parts
    /// must be at least 5 MiB).
    #[arg(long, value_parser = crate::size::parse_size)]
    chunk_size: Option<u64>,
    /// Most chunk bytes read but not yet acknowledged (the sender's memory bound). The
    /// window starts at 16 MiB (or two chunks) and grows towards this while
    /// acknowledgements come back on time, as on a long link; it stays small when the
    /// gateway is the bottleneck.
    #[arg(long, default_value = "256MiB", value_parser = crate::size::parse_size)]
    in_flight: u64,
    /// Keep the whole --in-flight window from the start instead of letting it adapt.
    #[arg(long)]
    fixed_window: bool,
    /// Congestion controller: bbr (default: fills long and lossy links), cubic (fair to
    /// other traffic on a shared link) or newreno.
    #[arg(long, default_value = "bbr")]
    congestion: trackshift_engine::transport::Congestion,
    /// Job id (reuse one to resume an interrupted send; default: a new UUID).
    #[arg(long)]
    job_id: Option<String>,
    /// Where to write the signed manifest and receipt (default: ./trackshift-receipts/JOB).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Offer only the post-quantum X25519MLKEM768 key exchange.
    #[arg(long)]
    pq_only: bool,
    /// How long to try to make the first connection before giving up (a gateway that is
    /// down, or an address nothing answers on), for example `10s`.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// How long to keep trying to reach a gateway that went away, or to open again a job
    /// the gateway failed for a passing reason (its disk full, say), before giving up, for
    /// example `30s` or `10m`; an interrupted send resumes where it stopped.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    retry_for: Duration,
    /// How long the gateway may be silent before the connection counts as dead
    /// (keep-alives go out every second; raise it for links that drop out for seconds).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Print the outcome as one JSON object on stdout (job, bytes, time, the documents
    /// written and each destination's status).
    #[arg(long)]
    json: bool,
}

/// `--to` split into host and port, before any name is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayAddr {
    /// A DNS name or an IP address (IPv6 without brackets).
    pub host: String,
    /// The UDP port.
    pub port: u16,
}

impl GatewayAddr {
    /// Parses `HOST`, `HOST:PORT`, `IPv4[:PORT]`, `[IPv6][:PORT]` or a bare IPv6 address.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let bad = || {
            anyhow::anyhow!(
                "--to {text:?}: expected HOST[:PORT], IPv4[:PORT] or [IPv6][:PORT] (default port {DEFAULT_PORT})"
            )
        };
        if text.is_empty() {
            return Err(bad());
        }
        if let Ok(ip) = text.parse::<std::net::IpAddr>() {
            return Ok(Self {
                host: ip.to_string(),
                port: DEFAULT_PORT,
            });
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            host.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
            match after {
                "" => (host, None),
                p => (host, Some(p.strip_prefix(':').ok_or_else(bad)?)),
            }
        } else {
            match text.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (text, None),
            }
        };
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| anyhow::anyhow!("--to {text:?}: the port must be 1 to 65535"))?,
        };
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !name_ok && host.parse::<std::net::IpAddr>().is_err() {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }

    /// The host when it is a DNS name (the certificate name to expect), not an address.
    pub fn dns_name(&self) -> Option<&str> {
        self.host
            .parse::<std::net::IpAddr>()
            .is_err()
            .then_some(self.host.as_str())
    }

    /// Resolves the host (an address is used as it is); the first address found.
    pub async fn resolve(&self) -> Result<SocketAddr> {
        let mut addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("resolving the gateway host {}", self.host))?;
        addrs
            .next()
            .with_context(|| format!("the gateway host {} has no address", self.host))
    }
}

pub(crate) fn trust(fingerprint: Option<&str>, ca: Option<&Path>) -> Result<ServerTrust> {
    match (fingerprint, ca) {
        (Some(fp), None) => {
            let mut pin = [0u8; 32];
            hex::decode_to_slice(fp.trim(), &mut pin)
                .context("--fingerprint must be 64 hex digits (the SHA-256 printed by `serve`)")?;
            Ok(ServerTrust::Fingerprint(pin))
        }
        (None, Some(ca)) => Ok(ServerTrust::CaFile(ca.to_path_buf())),
        _ => bail!("say how to trust the gateway: --fingerprint HEX or --ca FILE"),
    }
}

/// Sends a file or directory and writes the signed manifest and receipts.
pub async fn send(args: SendArgs) -> Result<()> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), None) => t.clone(),
        (None, Some(f)) => crate::read_secret_text(f)?,
        _ => bail!("no tenant token: set TRACKSHIFT_TOKEN or pass --token-file"),
    };
    let to = GatewayAddr::parse(&args.to)?;
    let addr = to.resolve().await?;
    let mut cfg = SendConfig::new(
        addr,
        trust(args.fingerprint.as_deref(), args.ca.as_deref())?,
        token,
        &args.dest[0],
    );
    cfg.destinations = args.dest.clone();
    cfg.server_name = (args.server_name.clone())
        .or_else(|| to.dns_name().map(str::to_string))
        .unwrap_or_else(|| "localhost".into());
    // A destination that does not parse is refused by the gateway, which names why.
    cfg.chunk_size = args.chunk_size.unwrap_or_else(|| {
        destination::default_chunk_size(
            args.dest
                .iter()
                .filter_map(|d| Destination::parse(d).ok())
                .map(|d| d.scheme()),
        )
    });
    cfg.in_flight_bytes = args.in_flight;
    if !args.fixed_window {
        cfg.adaptive_window = Some((16 << 20).max(2 * cfg.chunk_size));
    }
    cfg.job_id = args.job_id.clone();
    cfg.pq_only = args.pq_only;
    cfg.congestion = args.congestion;
    cfg.connect_timeout = Some(args.connect_timeout);
    cfg.retry_for = args.retry_for;
    cfg.idle_timeout = args.idle_timeout;
    let report = send_with_progress(&args.path, &cfg).await?;
    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("trackshift-receipts").join(&report.job_id));
    let (manifest, receipts) = write_documents(&out_dir, &report)?;
    let statuses: Vec<(DeliveryStatus, String)> = report
        .receipts
        .iter()
        .map(|r| {
            Receipt::from_json(r.as_bytes())
                .map(|r| (r.status, r.detail.clone().unwrap_or_default()))
                .context("the gateway's receipt does not parse")
        })
        .collect::<Result<_>>()?;
    if args.json {
        let dests: Vec<_> = (args.dest.iter().zip(&receipts).zip(&statuses))
            .map(|((d, p), (status, detail))| {
                serde_json::json!({
                    "destination": d,
                    "receipt": p,
                    "status": status.as_str(),
                    "detail": detail,
                })
            })
            .collect();
        let out = serde_json::json!({
            "job_id": report.job_id,
            "bytes": report.bytes,
            "seconds": report.elapsed.as_secs_f64(),
            "gbit_per_s": gbps(report.bytes, report.elapsed),
            "chunks_sent": report.chunks_sent,
            "reconnects": report.reconnects,
            "manifest": manifest,
            "destinations": dests,
        });
        crate::print_text(&format!("{out}\n"))?;
    } else {
        crate::print_lines(&[
            format!(
                "sent {} bytes in {:.2} s ({:.2} Gbit/s), job {}",
                report.bytes,
                report.elapsed.as_secs_f64(),
                gbps(report.bytes, report.elapsed),
                report.job_id
            ),
            format!("manifest: {}", manifest.display()),
        ])?;
        let lines: Vec<String> = (args.dest.iter().zip(&receipts).zip(&statuses))
            .map(|((dest, receipt), (status, _))| {
                format!(
                    "receipt:  {} ({dest}, {})",
                    receipt.display(),
                    status.as_str()
                )
            })
            .collect();
        crate::print_lines(&lines)?;
    }
    let failed: Vec<String> = (args.dest.iter().zip(&statuses))
        .filter(|(_, (s, _))| *s == DeliveryStatus::Failed)
        .map(|(d, (_, detail))| format!("{d}: {detail}"))
        .collect();
    if !failed.is_empty() {
        return Err(crate::exit::Partial {
            failed: failed.len(),
            total: args.dest.len(),
            detail: failed.join("; "),
        }
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_addresses_take_names_addresses_and_a_default_port() {
        let p = |s: &str| GatewayAddr::parse(s).map(|a| (a.host, a.port));
        assert_eq!(p("localhost:4433").unwrap(), ("localhost".into(), 4433));
        assert_eq!(
            p("gw.example.com").unwrap(),
            ("gw.example.com".into(), DEFAULT_PORT)
        );
        assert_eq!(p("10.0.0.7").unwrap(), ("10.0.0.7".into(), DEFAULT_PORT));
        assert_eq!(p("10.0.0.7:9000").unwrap(), ("10.0.0.7".into(), 9000));
        assert_eq!(p("[::1]:9000").unwrap(), ("::1".into(), 9000));
        assert_eq!(p("[::1]").unwrap(), ("::1".into(), DEFAULT_PORT));
        assert_eq!(p("::1").unwrap(), ("::1".into(), DEFAULT_PORT));
        for bad in [
            "",
            "host:",
            "host:0",
            "host:70000",
            "[::1",
            "[nothost]:1",
            "a b:1",
            "x:y:z",
            "-:",
        ] {
            assert!(p(bad).is_err(), "{bad:?} accepted");
        }
        let a = GatewayAddr::parse("gw.example.com:1").unwrap();
        assert_eq!(a.dns_name(), Some("gw.example.com"));
        assert_eq!(GatewayAddr::parse("127.0.0.1").unwrap().dns_name(), None);
    }

    #[tokio::test]
    async fn localhost_resolves_without_a_port() {
        let addr = GatewayAddr::parse("localhost")
            .unwrap()
            .resolve()
            .await
            .unwrap();
        assert!(addr.ip().is_loopback());
        assert_eq!(addr.port(), DEFAULT_PORT);
    }
}
