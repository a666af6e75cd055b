//! QUIC endpoints tuned for high bandwidth-delay paths.
//!
//! Settings (see `docs/PROTOCOL.md`, "Transport tuning"), measured with quinn 0.11 on
//! loopback here: default windows give about 5 Gbps; the windows below with 4 MiB UDP
//! socket buffers give about 7.5 Gbps and remove the ~2% loss of the kernel's default
//! 208 KiB buffer.
//!
//! | setting | value | why |
//! | --- | --- | --- |
//! | stream receive window | 32 MiB | several 4 MiB chunks in flight per stream at high RTT |
//! | connection receive window (gateway) | 16 MiB, grown to four times the measured bandwidth-delay product, at most 256 MiB, never shrunk ([`WindowTuner`]) | full speed on any path without holding more than it needs |
//! | connection send window | 256 MiB | ~2 Gbps × 1 s RTT worth of data in flight |
//! | concurrent unidirectional streams | 1024 | one stream per chunk in flight |
//! | UDP socket buffers | 4 MiB (capped by `net.core.rmem_max`) | absorbs bursts; no drops at 7+ Gbps |
//! | MTU discovery | on (quinn default), up to the path's limit | fewer packets per byte |
//! | congestion control | BBR for `trackshift send`, CUBIC for the job service ([`Congestion`]) | one transfer on a long, lossy link / many flows sharing a path |
//! | keep-alive / idle timeout | 1 s / 5 s | notice a dead peer within seconds and resume |
//!
//! A gateway connection starts smaller, until its sender is authenticated (see
//! [`server_transport_config`]): a peer that has shown no token can make the gateway hold
//! at most [`PRE_AUTH_WINDOW`] bytes for it, on its one control stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{EndpointConfig, IdleTimeout, TransportConfig, VarInt};

use crate::tls::{GatewayIdentity, ServerTrust, TlsError};

/// ALPN protocol id of the Trackshift wire protocol, version 1.
pub const ALPN: &[u8] = b"trackshift/1";
/// ALPN protocol id of the key set service (`keys fetch`): one request, one key bundle,
/// no authentication (the keys are public; the pinned certificate says whose they are).
pub const KEYS_ALPN: &[u8] = b"trackshift-keys/1";

/// The ALPN protocol the handshake of `conn` settled on.
pub fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// A client endpoint for the key set service: [`client_endpoint`]'s TLS and transport,
/// offering only [`KEYS_ALPN`].
pub fn keys_client_endpoint(
    bind: SocketAddr,
    trust: &ServerTrust,
) -> Result<quinn::Endpoint, TransportError> {
    let tls = trust.client_config_for(false, KEYS_ALPN)?;
    let crypto = QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport_config_with(Duration::from_secs(10))));
    let mut ep = endpoint(bind, None)?;
    ep.set_default_client_config(client);
    Ok(ep)
}

/// Per-stream receive window.
pub const STREAM_WINDOW: u32 = 32 << 20;
/// Per-connection send window, and the most a receive window grows to.
pub const CONNECTION_WINDOW: u32 = 256 << 20;
/// UDP socket send and receive buffer size requested from the kernel.
pub const UDP_BUFFER: usize = 4 << 20;
/// Most unidirectional (chunk) streams a peer may have open at once.
pub const MAX_UNI_STREAMS: u32 = 1024;
/// Connection receive window of a gateway connection before its sender is authenticated
/// (room for a `Hello`; raised to [`MIN_RECEIVE_WINDOW`] by [`open_after_auth`]).
pub const PRE_AUTH_WINDOW: u32 = 64 << 10;

/// How often an idle connection sends a keep-alive (a PING), so that silence means a dead
/// peer or path rather than nothing to say.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// How long a connection may hear nothing before it is closed as dead; with a keep-alive
/// every [`KEEP_ALIVE`], about five lost round trips in a row. QUIC uses the smaller of
/// both peers' values.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Endpoint set-up failures.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP socket could not be created or bound.
    #[error("binding UDP {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The gateway's certificate was refused by this side's trust (a `--fingerprint` that
    /// is not the gateway's, a certificate not signed by `--ca` or not for the server
    /// name): retrying cannot help.
    #[error(
        "the gateway at {addr} presented a certificate this sender does not trust (is --fingerprint the one the gateway printed, or --ca and --server-name right?): {reason}"
    )]
    Untrusted {
        /// Gateway address.
        addr: SocketAddr,
        /// What TLS said.
        reason: String,
    },
    /// Connecting failed.
    #[error("connecting to {addr}: {reason}")]
    Connect {
        /// Gateway address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// The transport parameters both sides use.
pub fn transport_config() -> TransportConfig {
    transport_config_with(IDLE_TIMEOUT)
}

/// [`transport_config`] with another idle timeout (clamped to 1 s ..= 10 min; the
/// keep-alive interval is the smaller of [`KEEP_ALIVE`] and a fifth of it).
pub fn transport_config_with(idle_timeout: Duration) -> TransportConfig {
    let idle = idle_timeout.clamp(Duration::from_secs(1), Duration::from_secs(600));
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS))
        .max_concurrent_bidi_streams(VarInt::from_u32(4))
        .keep_alive_interval(Some(KEEP_ALIVE.min(idle / 5)))
        .max_idle_timeout(Some(
            IdleTimeout::try_from(idle).expect("at most 10 min is a valid idle timeout"),
        ));
    t
}

fn udp_socket(addr: SocketAddr) -> Result<std::net::UdpSocket, TransportError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| TransportError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    if addr.is_ipv6() {
        // Dual-stack where the platform allows it; failure is harmless.
        let _ = socket.set_only_v6(false);
    }
    // The kernel caps these at rmem_max / wmem_max; a smaller buffer only costs speed.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&addr.into()).map_err(err)?;
    Ok(socket.into())
}

fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint, TransportError> {
    let socket = udp_socket(addr)?;
    quinn::Endpoint::new(
        EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| TransportError::Bind { addr, source })
}

/// A gateway endpoint listening on `listen`.
pub fn server_endpoint(
    listen: SocketAddr,
    identity: &GatewayIdentity,
    pq_only: bool,
) -> Result<quinn::Endpoint, TransportError> {
    let tls = identity.server_config(pq_only)?;
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(server_transport_config()));
    endpoint(listen, Some(server))
}

/// The gateway's transport parameters before authentication: a [`PRE_AUTH_WINDOW`]
/// connection window, no chunk streams, one control stream. Data on streams the gateway
/// has not accepted yet counts against the window, so this bounds what an unauthenticated
/// peer can make the gateway buffer.
pub fn server_transport_config() -> TransportConfig {
    let mut t = transport_config();
    t.receive_window(VarInt::from_u32(PRE_AUTH_WINDOW))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_concurrent_bidi_streams(VarInt::from_u32(1));
    t
}

/// Opens an authenticated gateway connection: a [`MIN_RECEIVE_WINDOW`] connection window
/// (grown to the path by [`tune_receive_window`]) and [`MAX_UNI_STREAMS`] chunk streams
/// (sent to the peer as `MAX_DATA`/`MAX_STREAMS`).
pub fn open_after_auth(conn: &quinn::Connection) {
    conn.set_receive_window(VarInt::from_u32(MIN_RECEIVE_WINDOW));
    conn.set_max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS));
}

/// A gateway connection's receive window once its sender is authenticated, and the least
/// it is sized to: room for loopback and LAN paths at full speed (on loopback 16 MiB moved
/// a 2 GiB file as fast as 256 MiB did, with the gateway's peak resident 103–116 MiB
/// instead of 132–158, BENCHMARKS.md).
pub const MIN_RECEIVE_WINDOW: u32 = 16 << 20;

/// How often [`tune_receive_window`] sizes the window again.
pub const WINDOW_TICK: Duration = Duration::from_millis(200);

/// Sizes a connection's receive window from what the path carries: four times the
/// measured bandwidth-delay product (bytes received per second × the smoothed round
/// trip), at least [`MIN_RECEIVE_WINDOW`] and at most [`CONNECTION_WINDOW`], and never
/// smaller than it was (credit taken back would stall the path at the next loss). Four
/// bandwidth-delay products: data behind a lost packet cannot be read (nor its credit
/// given back) until the retransmission arrives, a round trip or more later; with two,
/// BBR at 1 % loss lost a tenth of a 1 Gbit/s link in the simulator (BENCHMARKS.md,
/// "Long fat links"). While the window is what limits the path, a round trip carries the
/// window itself, so it grows fourfold a tick until the path is the limit. On loopback it
/// stays at the floor. Pure: driven by [`tune_receive_window`] and by tests.
#[derive(Debug, Clone)]
pub struct WindowTuner {
    window: u32,
}

impl Default for WindowTuner {
    fn default() -> Self {
        Self::new()
    }
}

impl WindowTuner {
    /// The window in bandwidth-delay products.
    const FACTOR: f64 = 4.0;

    /// A tuner at [`MIN_RECEIVE_WINDOW`].
    pub fn new() -> Self {
        Self {
            window: MIN_RECEIVE_WINDOW,
        }
    }

    /// `bytes` were received over `elapsed` with a smoothed round trip of `rtt`: the
    /// window to use now.
    pub fn on_tick(&mut self, bytes: u64, elapsed: Duration, rtt: Duration) -> u32 {
        let secs = elapsed.as_secs_f64();
        let bdp = if secs > 0.0 {
            bytes as f64 / secs * rtt.as_secs_f64()
        } else {
            0.0
        };
        let want = (Self::FACTOR * bdp)
            .clamp(f64::from(MIN_RECEIVE_WINDOW), f64::from(CONNECTION_WINDOW))
            as u32;
        self.window = self.window.max(want);
        self.window
    }
}

/// Keeps `conn`'s receive window sized to its path ([`WindowTuner`], every
/// [`WINDOW_TICK`]) until the connection closes.
pub async fn tune_receive_window(conn: quinn::Connection) {
    let mut tuner = WindowTuner::new();
    let mut window = MIN_RECEIVE_WINDOW;
    let mut last = (tokio::time::Instant::now(), conn.stats().udp_rx.bytes);
    let mut tick = tokio::time::interval(WINDOW_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = conn.closed() => return,
        }
        let now = (tokio::time::Instant::now(), conn.stats().udp_rx.bytes);
        let next = tuner.on_tick(now.1.saturating_sub(last.1), now.0 - last.0, conn.rtt());
        last = now;
        if next != window {
            tracing::debug!(
                from = window,
                to = next,
                rtt_us = conn.rtt().as_micros() as u64,
                "receive window"
            );
            window = next;
            conn.set_receive_window(VarInt::from_u32(window));
        }
    }
}

/// The congestion controller of a sender's connections (quinn's three).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Congestion {
    /// CUBIC (RFC 9438), the default of the job service's shared endpoint: fair among the
    /// many connections that share its path (at 200 concurrent jobs on loopback it moved
    /// 4.1–4.8 Gbit/s with a chunk p99 of 104–110 ms, BBR 3.0–3.7 Gbit/s and 219–241 ms).
    /// A loss is read as congestion, though: at 0.1 % random loss it carries under 1 % of
    /// a 1 Gbit/s link at 50 ms (BENCHMARKS.md, "Long fat links").
    #[default]
    Cubic,
    /// NewReno (RFC 9002's reference controller).
    NewReno,
    /// BBR (quinn's experimental BBRv1), the default of `trackshift send`: paces to the
    /// measured bottleneck bandwidth and round trip and does not back off on random loss
    /// (92–95 % of a 1 Gbit/s link at 0.1 % loss, 50 or 200 ms); it keeps about two
    /// bandwidth-delay products in flight, so on a link shared with other traffic `cubic`
    /// is the polite choice.
    Bbr,
}

impl Congestion {
    /// Sets this controller on `t`.
    pub fn apply(self, t: &mut TransportConfig) {
        use quinn::congestion::{BbrConfig, CubicConfig, NewRenoConfig};
        match self {
            Congestion::Cubic => t.congestion_controller_factory(Arc::new(CubicConfig::default())),
            Congestion::NewReno => {
                t.congestion_controller_factory(Arc::new(NewRenoConfig::default()))
            }
            Congestion::Bbr => t.congestion_controller_factory(Arc::new(BbrConfig::default())),
        };
    }
}

impl std::str::FromStr for Congestion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cubic" => Ok(Congestion::Cubic),
            "newreno" | "new-reno" | "reno" => Ok(Congestion::NewReno),
            "bbr" => Ok(Congestion::Bbr),
            other => Err(format!(
                "unknown congestion controller {other:?}: cubic, newreno or bbr"
            )),
        }
    }
}

impl std::fmt::Display for Congestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Congestion::Cubic => "cubic",
            Congestion::NewReno => "newreno",
            Congestion::Bbr => "bbr",
        })
    }
}

/// A client endpoint bound to `bind` that trusts gateways per `trust`.
pub fn client_endpoint(
    bind: SocketAddr,
    trust: &ServerTrust,
    pq_only: bool,
) -> Result<quinn::Endpoint, TransportError> {
    client_endpoint_with(bind, trust, pq_only, IDLE_TIMEOUT)
}

/// [`client_endpoint`] whose connections count as dead after `idle_timeout` of silence
/// (also the most a connection attempt to an unreachable gateway waits).
pub fn client_endpoint_with(
    bind: SocketAddr,
    trust: &ServerTrust,
    pq_only: bool,
    idle_timeout: Duration,
) -> Result<quinn::Endpoint, TransportError> {
    client_endpoint_tuned(bind, trust, pq_only, idle_timeout, Congestion::default())
}

/// [`client_endpoint_with`] whose connections use `congestion`.
pub fn client_endpoint_tuned(
    bind: SocketAddr,
    trust: &ServerTrust,
    pq_only: bool,
    idle_timeout: Duration,
    congestion: Congestion,
) -> Result<quinn::Endpoint, TransportError> {
    let tls = trust.client_config(pq_only)?;
    let crypto = QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = transport_config_with(idle_timeout);
    congestion.apply(&mut transport);
    client.transport_config(Arc::new(transport));
    let mut ep = endpoint(bind, None)?;
    ep.set_default_client_config(client);
    Ok(ep)
}

/// Connects to the gateway at `addr`, expecting its certificate to be valid for
/// `server_name` (only checked with [`ServerTrust::CaFile`]).
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
) -> Result<quinn::Connection, TransportError> {
    let connecting = endpoint
        .connect(addr, server_name)
        .map_err(|e| TransportError::Connect {
            addr,
            reason: e.to_string(),
        })?;
    connecting.await.map_err(|e| match e {
        // This side's TLS refused the handshake (a crypto error code is a TLS alert; the
        // gateway's own refusals arrive as a close from the peer instead).
        quinn::ConnectionError::TransportError(te) if is_tls_alert(te.code) => {
            TransportError::Untrusted {
                addr,
                reason: te.reason,
            }
        }
        e => TransportError::Connect {
            addr,
            reason: e.to_string(),
        },
    })
}

/// QUIC carries TLS alerts as the transport error codes 0x100 to 0x1ff (RFC 9001, 4.8).
fn is_tls_alert(code: quinn::TransportErrorCode) -> bool {
    (0x100..=0x1ff).contains(&u64::from(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn congestion_controllers_parse_and_print_by_name() {
        for c in [Congestion::Cubic, Congestion::NewReno, Congestion::Bbr] {
            assert_eq!(c.to_string().parse::<Congestion>(), Ok(c));
            c.apply(&mut transport_config());
        }
        assert_eq!("BBR".parse::<Congestion>(), Ok(Congestion::Bbr));
        let e = "vegas".parse::<Congestion>().unwrap_err();
        assert!(e.contains("cubic, newreno or bbr"), "{e}");
    }

    #[test]
    fn keep_alives_go_out_well_inside_the_idle_timeout() {
        for idle in [1, 2, 5, 30, 600, 3600] {
            let idle = Duration::from_secs(idle);
            let clamped = idle.clamp(Duration::from_secs(1), Duration::from_secs(600));
            // TransportConfig keeps its settings private; its Debug output shows them.
            let shown = format!("{:?}", transport_config_with(idle));
            let keep_alive = KEEP_ALIVE.min(clamped / 5);
            assert!(
                shown.contains(&format!("keep_alive_interval: Some({keep_alive:?})")),
                "{shown}"
            );
            assert!(keep_alive * 5 <= clamped);
        }
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    /// A path of `link` bytes/s and round trip `rtt`: what one tick carries with `window`.
    fn carried(link: f64, rtt: Duration, window: u32) -> u64 {
        let by_window = f64::from(window) / rtt.as_secs_f64();
        (link.min(by_window) * WINDOW_TICK.as_secs_f64()) as u64
    }

    /// Ticks until the tuner's window carries the whole link, and that window.
    fn settle(link: f64, rtt: Duration) -> (usize, u32) {
        let mut t = WindowTuner::new();
        let mut w = MIN_RECEIVE_WINDOW;
        for tick in 1..=20 {
            w = t.on_tick(carried(link, rtt, w), WINDOW_TICK, rtt);
            if carried(link, rtt, w) as f64 >= 0.99 * link * WINDOW_TICK.as_secs_f64() {
                return (tick, w);
            }
        }
        (usize::MAX, w)
    }

    #[test]
    fn loopback_stays_at_the_floor() {
        let mut t = WindowTuner::new();
        // 5 Gbit/s at 0.2 ms: a bandwidth-delay product of 125 kB.
        let w = t.on_tick(125_000_000, WINDOW_TICK, Duration::from_micros(200));
        assert_eq!(w, MIN_RECEIVE_WINDOW);
    }

    #[test]
    fn a_long_fat_link_is_filled_within_a_few_ticks() {
        // 1 Gbit/s at 200 ms: 25 MB in flight needed, 16 MiB carries 84 MB/s of 125.
        let (ticks, w) = settle(125e6, Duration::from_millis(200));
        assert!(ticks <= 3, "{ticks} ticks");
        assert!(f64::from(w) >= 25e6, "{w}");
        // 10 Gbit/s at 100 ms: 125 MB; the cap holds 268 MB.
        let (ticks, w) = settle(1.25e9, Duration::from_millis(100));
        assert!(ticks <= 5, "{ticks} ticks");
        assert!(w <= CONNECTION_WINDOW);
    }

    #[test]
    fn never_above_the_cap_and_never_smaller() {
        let mut t = WindowTuner::new();
        let rtt = Duration::from_secs(1);
        assert_eq!(
            t.on_tick(2_000_000_000, WINDOW_TICK, rtt),
            CONNECTION_WINDOW
        );
        // A pause (or a tick of no time) takes nothing back.
        assert_eq!(t.on_tick(0, WINDOW_TICK, rtt), CONNECTION_WINDOW);
        assert_eq!(t.on_tick(10, Duration::ZERO, rtt), CONNECTION_WINDOW);
    }
}
