//! The sending side: reads a file or directory in chunks, hashes each chunk, and streams
//! them to a gateway over QUIC, one unidirectional stream per chunk, many in flight, within a
//! memory budget. Chunks are read into `Bytes` and handed to QUIC without another copy.
//! When the connection drops it reconnects and sends only what the gateway does not hold.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{debug, info, warn};
use trackshift_crypto::{ChunkLayout, Hash32};

use crate::protocol::{
    self, ChunkHeader, ChunkRef, ClientFrame, FileSpec, FrameDecoder, OpenJob, ProtocolError,
    Secret, SenderJob, ServerFrame,
};
use crate::tls::ServerTrust;

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The source could not be read.
    #[error(transparent)]
    Source(#[from] crate::scan::ScanError),
    /// The gateway refused the connection (bad token, version).
    #[error("gateway refused the connection: {0}")]
    Refused(String),
    /// The gateway failed the job.
    #[error("job failed at the gateway: {reason}")]
    JobFailed {
        /// The gateway's reason.
        reason: String,
        /// True when retrying cannot help.
        permanent: bool,
    },
    /// The protocol was broken (by either side).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// Connecting or the connection failed.
    #[error("connection: {0}")]
    Connection(String),
    /// Endpoint set-up.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// A source file could not be read during the send (removed, truncated, I/O error).
    #[error("reading the source: {0}")]
    SourceRead(String),
    /// Gave up after repeated connection failures.
    #[error("gave up after {attempts} connection attempts; last error: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: String,
    },
}

impl SendError {
    fn retryable(&self) -> bool {
        match self {
            SendError::Connection(_) => true,
            SendError::JobFailed { permanent, .. } => !permanent,
            _ => false,
        }
    }
}

/// Deliberate faults for tests of the recovery paths.
#[derive(Debug, Default)]
pub struct FaultInjection {
    /// Flip one bit of the first non-empty chunk after hashing it, once (the gateway must
    /// reject it and receive a good copy).
    pub corrupt_first_chunk: AtomicBool,
    /// Close the connection after this many chunks were sent, once (the sender must
    /// reconnect and resume).
    pub drop_connection_after: std::sync::Mutex<Option<u64>>,
}

/// Settings of one send.
#[derive(Debug, Clone)]
pub struct SendConfig {
    /// Gateway address.
    pub gateway: SocketAddr,
    /// Name the gateway certificate must carry (`localhost` for generated ones).
    pub server_name: String,
    /// How the gateway's certificate is trusted.
    pub trust: ServerTrust,
    /// Tenant token.
    pub token: String,
    /// Destination URI at the gateway.
    pub destination: String,
    /// Chunk size (power of two).
    pub chunk_size: u64,
    /// Most chunk bytes read but not yet acknowledged.
    pub in_flight_bytes: u64,
    /// Only the X25519MLKEM768 key exchange.
    pub pq_only: bool,
    /// Job id (default: a new UUID).
    pub job_id: Option<String>,
    /// Correlation id recorded in logs and the receipt.
    pub correlation_id: Option<String>,
    /// How often to reconnect after a dropped connection before giving up.
    pub max_reconnects: u32,
    /// Test faults.
    pub faults: Arc<FaultInjection>,
}

impl SendConfig {
    /// Defaults: 4 MiB chunks, 256 MiB in flight, 20 reconnects.
    pub fn new(
        gateway: SocketAddr,
        trust: ServerTrust,
        token: impl Into<String>,
        destination: impl Into<String>,
    ) -> Self {
        Self {
            gateway,
            server_name: "localhost".into(),
            trust,
            token: token.into(),
            destination: destination.into(),
            chunk_size: trackshift_crypto::hash::DEFAULT_CHUNK_SIZE,
            in_flight_bytes: 256 << 20,
            pq_only: false,
            job_id: None,
            correlation_id: None,
            max_reconnects: 20,
            faults: Arc::new(FaultInjection::default()),
        }
    }
}

/// Progress of a send, reported as acknowledgements arrive.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Bytes the gateway acknowledged (verified and durable).
    pub acked_bytes: u64,
    /// Bytes in the job.
    pub total_bytes: u64,
    /// Time since the send started.
    pub elapsed: Duration,
}

/// Outcome of a completed send.
#[derive(Debug, Clone)]
pub struct SendReport {
    /// The job id.
    pub job_id: String,
    /// The signed manifest (JSON).
    pub manifest: String,
    /// The signed receipt (JSON).
    pub receipt: String,
    /// Bytes in the job.
    pub bytes: u64,
    /// Chunk streams sent (more than the chunk count when chunks were resent).
    pub chunks_sent: u64,
    /// Reconnections needed.
    pub reconnects: u32,
    /// Wall time.
    pub elapsed: Duration,
}

struct Source {
    files: Vec<(PathBuf, FileSpec)>,
    handles: Vec<std::sync::OnceLock<Arc<File>>>,
}

impl Source {
    fn file(&self, i: u32) -> std::io::Result<Arc<File>> {
        let cell = &self.handles[i as usize];
        if let Some(f) = cell.get() {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(&self.files[i as usize].0)?);
        Ok(cell.get_or_init(|| f).clone())
    }
}

/// Sends `path` (a file or a directory tree) to the gateway and returns the signed manifest
/// and receipt. `progress` is called as chunks are acknowledged.
pub async fn send_path(
    path: &Path,
    cfg: &SendConfig,
    progress: impl Fn(Progress) + Send + Sync,
) -> Result<SendReport, SendError> {
    let started = Instant::now();
    let listed = crate::scan::list_files(path)?;
    let source_uri = format!(
        "file://{}",
        std::fs::canonicalize(path)
            .map_err(|e| crate::scan::ScanError::Io {
                path: path.to_path_buf(),
                source: e
            })?
            .display()
    );
    let open = OpenJob {
        job_id: cfg
            .job_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        destination: cfg.destination.clone(),
        chunk_size: cfg.chunk_size,
        source: source_uri,
        files: listed.iter().map(|(_, spec)| spec.clone()).collect(),
        correlation_id: cfg.correlation_id.clone(),
    };
    let mut job = SenderJob::new(&open)?;
    let total_bytes: u64 = open.files.iter().map(|f| f.size).sum();
    let source = Arc::new(Source {
        handles: listed.iter().map(|_| std::sync::OnceLock::new()).collect(),
        files: listed,
    });
    let bind: SocketAddr = if cfg.gateway.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let endpoint = crate::transport::client_endpoint(bind, &cfg.trust, cfg.pq_only)?;
    let mut reconnects = 0u32;
    let mut chunks_sent = 0u64;
    let report = |p: u64| {
        progress(Progress {
            acked_bytes: p,
            total_bytes,
            elapsed: started.elapsed(),
        })
    };
    loop {
        match session(
            &endpoint,
            cfg,
            &open,
            &mut job,
            &source,
            &mut chunks_sent,
            &report,
        )
        .await
        {
            Ok((manifest, receipt)) => {
                endpoint.close(0u32.into(), b"done");
                return Ok(SendReport {
                    job_id: open.job_id.clone(),
                    manifest,
                    receipt,
                    bytes: total_bytes,
                    chunks_sent,
                    reconnects,
                    elapsed: started.elapsed(),
                });
            }
            Err(e) if e.retryable() => {
                if reconnects >= cfg.max_reconnects {
                    return Err(SendError::GaveUp {
                        attempts: reconnects + 1,
                        last: e.to_string(),
                    });
                }
                reconnects += 1;
                let backoff = Duration::from_millis((100u64 << reconnects.min(6)).min(5_000));
                warn!(job = %open.job_id, error = %e, attempt = reconnects, ?backoff, "connection lost; resuming");
                tokio::time::sleep(backoff).await;
            }
            Err(e) => return Err(e),
        }
    }
}

enum Event {
    Frame(ServerFrame),
    ControlClosed(String),
    Sent(ChunkRef, Hash32),
    SendFailed(String),
    SourceFailed(String),
}

async fn session(
    endpoint: &quinn::Endpoint,
    cfg: &SendConfig,
    open: &OpenJob,
    job: &mut SenderJob,
    source: &Arc<Source>,
    chunks_sent: &mut u64,
    report: &(impl Fn(u64) + Send + Sync),
) -> Result<(String, String), SendError> {
    let conn = crate::transport::connect(endpoint, cfg.gateway, &cfg.server_name)
        .await
        .map_err(|e| SendError::Connection(e.to_string()))?;
    let (mut send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| SendError::Connection(e.to_string()))?;
    let conn_err = |e: quinn::WriteError| SendError::Connection(e.to_string());
    let hello = ClientFrame::Hello {
        version: protocol::VERSION,
        token: Secret(cfg.token.clone()),
    };
    send.write_all(&protocol::encode_frame(&hello))
        .await
        .map_err(conn_err)?;
    send.write_all(&protocol::encode_frame(&ClientFrame::OpenJob(open.clone())))
        .await
        .map_err(conn_err)?;

    let (events, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let reader = tokio::spawn(read_control(recv, events.clone()));
    let _reader_guard = AbortOnDrop(reader);

    let budget_max = u32::try_from(cfg.in_flight_bytes)
        .unwrap_or(u32::MAX)
        .max(1);
    let budget = Arc::new(Semaphore::new(budget_max as usize));
    let mut in_flight: HashMap<ChunkRef, OwnedSemaphorePermit> = HashMap::new();
    let mut handle = None;
    let mut next: Option<ChunkRef> = None;
    let mut finish_sent = false;

    loop {
        if let Some(h) = handle {
            if next.is_none() {
                next = job.next_chunk();
            }
            if job.is_complete() && !finish_sent {
                let frame = ClientFrame::FinishJob {
                    handle: h,
                    file_hashes: job.file_hashes()?,
                };
                send.write_all(&protocol::encode_frame(&frame))
                    .await
                    .map_err(conn_err)?;
                finish_sent = true;
            }
        }
        let want = next.map(|c| {
            let len = job.layout(c.file).chunk_len(c.index);
            u32::try_from(len).unwrap_or(u32::MAX).clamp(1, budget_max)
        });
        tokio::select! {
            permit = budget.clone().acquire_many_owned(want.unwrap_or(1)), if want.is_some() && handle.is_some() => {
                let permit = permit.expect("budget is never closed");
                let c = next.take().expect("want implies next");
                in_flight.insert(c, permit);
                *chunks_sent += 1;
                let layout = *job.layout(c.file);
                spawn_chunk(conn.clone(), source.clone(), layout, handle.expect("open"), c, cfg.faults.clone(), events.clone());
                let drop_now = {
                    let mut d = cfg.faults.drop_connection_after.lock().expect("fault lock");
                    match *d {
                        Some(n) if *chunks_sent >= n => { *d = None; true }
                        _ => false,
                    }
                };
                if drop_now {
                    conn.close(9u32.into(), b"fault injection: dropped connection");
                }
            }
            ev = ev_rx.recv() => {
                match ev.expect("the session holds a sender") {
                    Event::Frame(ServerFrame::Welcome { tenant, .. }) => debug!(%tenant, "authenticated"),
                    Event::Frame(ServerFrame::Refused { reason }) => return Err(SendError::Refused(reason)),
                    Event::Frame(ServerFrame::JobReady { handle: h, held, .. }) => {
                        job.on_ready(&held)?;
                        handle = Some(h);
                        next = None;
                        in_flight.clear();
                        let (acked, bytes, total) = job.progress();
                        info!(job = %open.job_id, held = acked, total, "job ready");
                        report(bytes);
                    }
                    Event::Frame(ServerFrame::Acks { chunks, .. }) => {
                        for c in chunks {
                            job.on_ack(c)?;
                            in_flight.remove(&c);
                        }
                        report(job.progress().1);
                    }
                    Event::Frame(ServerFrame::Reject { chunk, reason, .. }) => {
                        warn!(job = %open.job_id, ?chunk, %reason, "chunk rejected; sending it again");
                        in_flight.remove(&chunk);
                        if next == Some(chunk) {
                            next = None;
                        }
                        job.on_reject(chunk)?;
                    }
                    Event::Frame(ServerFrame::JobDone { manifest, receipt, .. }) => {
                        let _ = send.finish();
                        conn.close(0u32.into(), b"done");
                        return Ok((manifest, receipt));
                    }
                    Event::Frame(ServerFrame::JobFailed { reason, permanent, .. }) => {
                        return Err(SendError::JobFailed { reason, permanent });
                    }
                    Event::Sent(c, h) => job.set_hash(c, h),
                    Event::SendFailed(e) | Event::ControlClosed(e) => return Err(SendError::Connection(e)),
                    Event::SourceFailed(e) => {
                        let _ = send.write_all(&protocol::encode_frame(&ClientFrame::CancelJob {
                            handle: handle.unwrap_or(u32::MAX),
                            reason: "source unreadable".into(),
                        })).await;
                        return Err(SendError::SourceRead(e));
                    }
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn read_control(mut recv: quinn::RecvStream, events: mpsc::UnboundedSender<Event>) {
    let mut dec = FrameDecoder::<ServerFrame>::new(protocol::MAX_CONTROL_FRAME);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => {
                    if events.send(Event::Frame(f)).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = events.send(Event::ControlClosed(e.to_string()));
                    return;
                }
            }
        }
        match recv.read(&mut buf).await {
            Ok(Some(n)) => dec.push(&buf[..n]),
            Ok(None) => {
                let _ = events.send(Event::ControlClosed(
                    "gateway closed the control stream".into(),
                ));
                return;
            }
            Err(e) => {
                let _ = events.send(Event::ControlClosed(e.to_string()));
                return;
            }
        }
    }
}

fn spawn_chunk(
    conn: quinn::Connection,
    source: Arc<Source>,
    layout: ChunkLayout,
    handle: u32,
    c: ChunkRef,
    faults: Arc<FaultInjection>,
    events: mpsc::UnboundedSender<Event>,
) {
    tokio::spawn(async move {
        let result = async {
            let read = tokio::task::spawn_blocking(move || -> Result<(Bytes, Hash32), String> {
                let file = source
                    .file(c.file)
                    .map_err(|e| format!("{}: {e}", source.files[c.file as usize].0.display()))?;
                let mut buf = vec![0u8; layout.chunk_len(c.index) as usize];
                file.read_exact_at(&mut buf, layout.offset(c.index))
                    .map_err(|e| {
                        format!(
                            "{}: {e} (did the file change?)",
                            source.files[c.file as usize].0.display()
                        )
                    })?;
                let hash = layout.chunk_hash(c.index, &buf);
                if !buf.is_empty() && faults.corrupt_first_chunk.swap(false, Ordering::SeqCst) {
                    buf[0] ^= 0x01;
                }
                Ok((Bytes::from(buf), hash))
            })
            .await
            .map_err(|e| e.to_string())?;
            let (data, hash) = match read {
                Ok(r) => r,
                Err(e) => {
                    let _ = events.send(Event::SourceFailed(e));
                    return Ok(());
                }
            };
            // Report the hash before the data leaves, so it is recorded before any ack.
            let _ = events.send(Event::Sent(c, hash));
            let header = ChunkHeader {
                handle,
                chunk: c,
                len: data.len() as u64,
                hash,
            };
            let hbytes = postcard::to_allocvec(&header).expect("headers serialise");
            let mut prefix = Vec::with_capacity(4 + hbytes.len());
            prefix.extend_from_slice(&(hbytes.len() as u32).to_be_bytes());
            prefix.extend_from_slice(&hbytes);
            let mut stream = conn.open_uni().await.map_err(|e| e.to_string())?;
            stream.write_all(&prefix).await.map_err(|e| e.to_string())?;
            stream.write_chunk(data).await.map_err(|e| e.to_string())?;
            stream.finish().map_err(|e| e.to_string())?;
            Ok::<(), String>(())
        }
        .await;
        if let Err(e) = result {
            let _ = events.send(Event::SendFailed(e));
        }
    });
}
