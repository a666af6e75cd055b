//! One job's sending state across connections: the protocol core ([`SenderJob`]), the
//! chunks in flight and their budget, the outcome.

use super::*;

pub(super) struct InFlight {
    pub(super) _permit: OwnedSemaphorePermit,
    pub(super) shared: Option<BudgetPermit>,
    pub(super) sent: Instant,
}

/// One job's sending state across connections.
pub(super) struct ActiveJob {
    pub(super) open: OpenJob,
    pub(super) job: Option<SenderJob>,
    pub(super) source: Arc<Source>,
    pub(super) total_bytes: u64,
    /// Handle on the current connection, once the gateway answered `JobReady`.
    pub(super) handle: Option<u32>,
    /// `OpenJob` sent on the current connection and not answered yet.
    pub(super) awaiting_ready: bool,
    /// The next chunk to send, taken from `job` and waiting for budget.
    pub(super) next: Option<ChunkRef>,
    /// Chunks sent and not yet acknowledged: their budget and when they were sent.
    pub(super) in_flight: HashMap<ChunkRef, InFlight>,
    pub(super) finish_sent: bool,
    pub(super) chunks_sent: u64,
    /// When the job is opened again after the gateway failed it or had no room for it,
    /// and when it is given up (pure: `protocol::retry`).
    pub(super) retry: crate::protocol::retry::JobRetry,
    /// Set when the job can no longer change (success or final error).
    pub(super) done: bool,
    pub(super) outcome: Option<Result<(String, Vec<String>), SendError>>,
    pub(super) finished: Option<Duration>,
}

impl ActiveJob {
    pub(super) fn prepare(req: &JobRequest, chunk_size: u64) -> Result<Self, SendError> {
        let (listed, reader, source_uri) = match &req.confined {
            Some(confined) => {
                let listing = crate::scan::list_confined(confined)?;
                let listed: Vec<_> = listing.files().map(|(p, f)| (p, f.clone())).collect();
                let uri = format!("file://{}", confined.path().display());
                (listed, Reader::Confined(listing), uri)
            }
            None => {
                let listed = crate::scan::list_files(&req.path)?;
                let uri = format!(
                    "file://{}",
                    std::fs::canonicalize(&req.path)
                        .map_err(|e| crate::scan::ScanError::Io {
                            path: req.path.clone(),
                            source: e
                        })?
                        .display()
                );
                let files = OpenFiles::new(listed.len());
                (listed, Reader::Plain(files), uri)
            }
        };
        let open = OpenJob {
            job_id: req
                .job_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            destinations: req.destinations.clone(),
            chunk_size,
            source: source_uri,
            files: listed.iter().map(|(_, spec)| spec.clone()).collect(),
            correlation_id: req.correlation_id.clone(),
            classification: req.classification.clone(),
            strict: req.strict,
        };
        let job = SenderJob::new(&open)?;
        Ok(Self {
            total_bytes: open.files.iter().map(|f| f.size).sum(),
            source: Arc::new(Source {
                files: listed,
                reader,
            }),
            open,
            job: Some(job),
            handle: None,
            next: None,
            in_flight: HashMap::new(),
            finish_sent: false,
            chunks_sent: 0,
            retry: Default::default(),
            awaiting_ready: false,
            done: false,
            outcome: None,
            finished: None,
        })
    }

    pub(super) fn failed() -> Self {
        Self {
            open: OpenJob {
                job_id: String::new(),
                destinations: Vec::new(),
                chunk_size: 0,
                source: String::new(),
                files: Vec::new(),
                correlation_id: None,
                classification: None,
                strict: None,
            },
            job: None,
            source: Arc::new(Source {
                files: Vec::new(),
                reader: Reader::Plain(OpenFiles::new(0)),
            }),
            total_bytes: 0,
            handle: None,
            next: None,
            in_flight: HashMap::new(),
            finish_sent: false,
            chunks_sent: 0,
            retry: Default::default(),
            awaiting_ready: false,
            done: true,
            outcome: None,
            finished: None,
        }
    }

    pub(super) fn sender(&mut self) -> &mut SenderJob {
        self.job.as_mut().expect("only prepared jobs are driven")
    }

    /// Forgets per-connection state (handles, in-flight chunks).
    pub(super) fn detach(&mut self) {
        self.retry.cancel_due();
        self.handle = None;
        self.next = None;
        self.in_flight.clear();
        self.finish_sent = false;
    }

    pub(super) fn settle(
        &mut self,
        outcome: Result<(String, Vec<String>), SendError>,
        at: Duration,
    ) {
        self.detach();
        self.source.close();
        self.done = true;
        self.outcome = Some(outcome);
        self.finished = Some(at);
    }
}
