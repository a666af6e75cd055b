//! A job made ready to send: its source listed and its `OpenJob` built. Its state across
//! connections lives in the protocol session ([`SenderSession`]).

use super::*;

/// Lists `req`'s source and describes the job as it is opened at the gateway.
pub(super) fn prepare(req: &JobRequest, chunk_size: u64) -> Result<(OpenJob, Source), SendError> {
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
        traceparent: req.traceparent,
    };
    Ok((
        open,
        Source {
            files: listed,
            reader,
        },
    ))
}

/// A send under way: the protocol session, and per job its source and what its chunks in
/// flight hold outside the session (their part of a budget shared with other sends).
pub(super) struct Sending {
    pub(super) session: SenderSession,
    /// Per session job: its source.
    pub(super) sources: Vec<Arc<Source>>,
    /// Per session job: its index among the send's requests (for progress reports).
    pub(super) requests: Vec<usize>,
    pub(super) held: HashMap<(usize, ChunkRef), Option<BudgetPermit>>,
    /// Per session job: why its source could not be read, if that ended it.
    pub(super) source_errors: HashMap<usize, Arc<SourceReadError>>,
}

impl Sending {
    /// Carries out a session action that needs no connection (everything but frames).
    pub(super) fn apply(
        &mut self,
        action: &Action,
        cfg: &SendConfig,
        report: &(impl Fn(usize, u64, u64) + Send + Sync),
    ) {
        match *action {
            Action::Frame(_) => {}
            Action::Acked {
                job,
                chunk,
                latency,
            } => {
                if let Some(Some(p)) = self.held.remove(&(job, chunk)) {
                    p.observe(latency);
                }
                if let Some(hook) = &cfg.chunk_latency {
                    (hook.0)(latency);
                }
            }
            Action::Dropped { job, chunk } => {
                self.held.remove(&(job, chunk));
            }
            Action::DroppedAll { job } => self.held.retain(|k, _| k.0 != job),
            Action::Progress { job } => {
                let j = self.session.job(job);
                report(self.requests[job], j.acked_bytes(), j.total_bytes());
            }
            // Its chunks in flight were given back by the `DroppedAll` before this.
            Action::Settled { job } => self.sources[job].close(),
        }
    }
}
