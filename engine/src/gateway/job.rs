//! A job the gateway holds: its destinations and their writers, the connector cache,
//! and opening (or resuming) a job, one open of a job at a time.

use super::*;

/// A cached connector's identity: the destination (with the operator's options and the
/// part the operator vouches for), verification, and the tenant whose own credentials it
/// uses (empty: the process environment's).
pub(super) type ConnectorKey = (trackshift_connectors::Destination, VerifyMode, String);

/// Most connectors a gateway keeps for reuse (see `Shared::connector`).
pub(super) const CONNECTOR_CACHE_MAX: usize = 256;

/// A chunk that is written and waits to become durable before it is acknowledged.
pub(super) struct Pending {
    pub(super) chunk: ChunkRef,
    pub(super) hash: Hash32,
    pub(super) handle: u32,
    pub(super) reply: mpsc::UnboundedSender<ServerFrame>,
    pub(super) _permit: crate::quota::MemoryPermit,
}

/// A job the gateway holds (in progress or finished): its destinations and writers, its
/// journal and its seal. (The job service's queued job is [`crate::jobs::Job`].)
pub(super) struct HeldJob {
    pub(super) tenant: String,
    /// Job id and correlation id, for log lines.
    pub(super) id: String,
    pub(super) correlation: String,
    /// The trace id of the job's W3C trace context, if it came with one.
    pub(super) trace: Option<String>,
    pub(super) dir: PathBuf,
    pub(super) state: Mutex<ReceiverJob>,
    /// Where the job writes: one or more destinations, each chunk to all of them.
    pub(super) dests: Vec<Dest>,
    /// Fail-closed: any destination failing fails the job (else a failing destination is
    /// dropped, recorded in its receipt, while the others carry on).
    pub(super) strict: bool,
    pub(super) resume: bool,
    pub(super) commit_tx: mpsc::UnboundedSender<Pending>,
    pub(super) finished: tokio::sync::Mutex<Option<(String, Vec<String>)>>,
    pub(super) failed: Mutex<Option<String>>,
    /// The sender cancelled the job: its partial objects are discarded.
    pub(super) cancelled: std::sync::atomic::AtomicBool,
    /// Per file, its place among the gateway's open files while it is being written.
    pub(super) open_files: Vec<Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>,
}

/// One destination of a job.
pub(super) struct Dest {
    pub(super) connector: Arc<dyn Connector>,
    /// Its counters (label: scheme and host of the URI).
    pub(super) metrics: super::dest_metrics::DestMetrics,
    /// One slot per file of the job.
    pub(super) writers: Vec<WriterSlot>,
    /// Why this destination was dropped (non-strict fan-out).
    pub(super) failed: Mutex<Option<String>>,
}

/// One file's writer at one destination. It is open only while the file is being written:
/// closed once every chunk of the file is durable and again once the file is committed,
/// and opened again (resuming) when it is needed after that, so a job holds writers (and
/// their descriptors) for the files in flight, not for every file it has.
#[derive(Default)]
pub(super) struct WriterSlot {
    pub(super) writer: tokio::sync::Mutex<Option<Arc<dyn ObjectWriter>>>,
    /// The destination may hold a partial object of this file (opened here, or chunks held
    /// before a restart): an open resumes it, a cancellation or a drop aborts it.
    pub(super) touched: std::sync::atomic::AtomicBool,
}

impl WriterSlot {
    pub(super) fn new(touched: bool) -> Self {
        Self {
            writer: tokio::sync::Mutex::new(None),
            touched: std::sync::atomic::AtomicBool::new(touched),
        }
    }
}

impl HeldJob {
    pub(super) fn open(&self) -> OpenJob {
        self.state.lock().expect("job lock").open().clone()
    }

    /// What the connector of destination `dest` is told about file `file`.
    pub(super) fn spec(&self, dest: usize, file: u32) -> ObjectSpec {
        let state = if dest == 0 {
            format!("upload-{file}.json")
        } else {
            format!("upload-{dest}-{file}.json")
        };
        // Only what this file needs, under the lock: not a copy of the whole job (a job
        // of many files would copy every file's entry for each file it opens).
        let held = self.state.lock().expect("job lock");
        let open = held.open();
        let f = &open.files[file as usize];
        ObjectSpec {
            tenant: self.tenant.clone(),
            job_id: open.job_id.clone(),
            path: f.path.clone(),
            size: f.size,
            chunk_size: open.chunk_size,
            state_file: Some(self.dir.join(state)),
        }
    }

    /// The job's id.
    pub(super) fn job_id(&self) -> String {
        self.state.lock().expect("job lock").open().job_id.clone()
    }

    pub(super) async fn writer(
        &self,
        dest: usize,
        file: u32,
    ) -> Result<Arc<dyn ObjectWriter>, GatewayError> {
        let d = &self.dests[dest];
        let slot = d
            .writers
            .get(file as usize)
            .ok_or(GatewayError::FileIndex(file))?;
        let (w, created) = {
            let mut held = slot.writer.lock().await;
            match held.as_ref() {
                Some(w) => (w.clone(), false),
                None => {
                    if let Some(reason) = self.failed.lock().expect("job lock").clone() {
                        return Err(GatewayError::JobFailed(reason));
                    }
                    // Opened before (and closed since): resume it, keeping what it holds.
                    let resume = self.resume || slot.touched.load(Ordering::Acquire);
                    let w = d.connector.open(&self.spec(dest, file), resume).await?;
                    slot.touched.store(true, Ordering::Release);
                    *held = Some(w.clone());
                    (w, true)
                }
            }
        };
        // A drop or a cancellation racing with this open: it marks first, then aborts the
        // writers it finds; a writer this call opened checks after storing. Whichever comes
        // second aborts. (A job that merely failed keeps its partial objects for resume.)
        if created {
            let gone = if self.cancelled.load(Ordering::Relaxed) {
                Some("the job was cancelled".to_string())
            } else {
                d.failed.lock().expect("dest lock").clone()
            };
            if let Some(reason) = gone {
                let mut held = slot.writer.lock().await;
                if held.as_ref().is_some_and(|h| Arc::ptr_eq(h, &w)) {
                    *held = None;
                }
                drop(held);
                if w.abort().await.is_ok() {
                    slot.touched.store(false, Ordering::Release);
                }
                return Err(GatewayError::JobFailed(reason));
            }
        }
        Ok(w)
    }

    /// Closes file `file`'s writer at destination `dest` (it is opened again if needed);
    /// `early` (the file is complete but not committed): only a writer that holds
    /// something open.
    pub(super) async fn close_writer(&self, dest: usize, file: u32, early: bool) {
        let Some(slot) = self.dests[dest].writers.get(file as usize) else {
            return;
        };
        let w = {
            let mut held = slot.writer.lock().await;
            if early && held.as_ref().is_some_and(|w| !w.holds_open()) {
                return;
            }
            held.take()
        };
        let Some(w) = w else {
            return;
        };
        // Out of the slot, nobody gets this writer again: when no call holds it now, its
        // remote handles go too (else the last holder's drop releases what a drop can).
        if Arc::strong_count(&w) == 1
            && let Err(e) = w.close().await
        {
            debug!(tenant = %self.tenant, job = %self.id, destination = %self.dests[dest].connector.uri(), error = %e, "closing a writer failed");
        }
    }

    /// The file is complete: closes its writers that hold something open (see
    /// [`ObjectWriter::holds_open`]) and gives up its place among the open files.
    pub(super) async fn close_writers(&self, file: u32) {
        for d in 0..self.dests.len() {
            self.close_writer(d, file, true).await;
        }
        if let Some(place) = self.open_files.get(file as usize) {
            place.lock().expect("open files lock").take();
        }
    }

    /// Takes a place among the gateway's open files (`pool`) for file `file`, unless it has
    /// one; waits at most [`OPEN_FILE_WAIT`], then goes on without.
    pub(super) async fn hold_open_file(&self, pool: &Arc<Semaphore>, file: u32) {
        let Some(place) = self.open_files.get(file as usize) else {
            return;
        };
        if place.lock().expect("open files lock").is_some() {
            return;
        }
        let permit = match tokio::time::timeout(OPEN_FILE_WAIT, pool.clone().acquire_owned()).await
        {
            Ok(Ok(p)) => p,
            _ => {
                debug!(tenant = %self.tenant, job = %self.id, file, "no place among the open files in time; writing anyway");
                return;
            }
        };
        let mut place = place.lock().expect("open files lock");
        if place.is_none() {
            *place = Some(permit);
        }
    }

    /// Discards every partial object the job may have at destination `d`: the writers
    /// open now, and those closed since (opened again to abort them). Stops reopening at
    /// the first sign that the destination is unreachable.
    pub(super) async fn abort_dest(&self, d: usize) {
        let dest = &self.dests[d];
        for (file, slot) in dest.writers.iter().enumerate() {
            let mut held = slot.writer.lock().await;
            let w = match held.take() {
                Some(w) => w,
                None if slot.touched.load(Ordering::Acquire) => {
                    match dest.connector.open(&self.spec(d, file as u32), true).await {
                        Ok(w) => w,
                        Err(e) => {
                            warn!(tenant = %self.tenant, job = %self.id, correlation_id = %self.correlation, trace_id = self.trace.as_deref(), destination = %dest.connector.uri(), error = %e, "could not reopen a partial object to discard it");
                            if e.is_transient()
                                || matches!(
                                    e,
                                    trackshift_connectors::ConnectorError::Unavailable(_)
                                )
                            {
                                return;
                            }
                            continue;
                        }
                    }
                }
                None => continue,
            };
            drop(held);
            if w.abort().await.is_ok() {
                slot.touched.store(false, Ordering::Release);
            }
        }
    }

    /// Destinations still being written.
    pub(super) fn live(&self) -> Vec<usize> {
        (0..self.dests.len())
            .filter(|&d| self.dests[d].failed.lock().expect("dest lock").is_none())
            .collect()
    }

    /// Records that destination `d` failed with `e`. The job goes on without it unless it is
    /// strict or no destination is left; then the error is returned (the job fails).
    pub(super) async fn drop_dest(&self, d: usize, e: GatewayError) -> Result<(), GatewayError> {
        let uri = self.dests[d].connector.uri().to_string();
        if self.strict || self.dests.len() == 1 {
            return Err(e);
        }
        {
            let mut failed = self.dests[d].failed.lock().expect("dest lock");
            if failed.is_some() {
                return Ok(());
            }
            *failed = Some(e.to_string());
        }
        // Remembered across restarts: chunks acknowledged from now on are not written there,
        // so a resumed job must not bring this destination back.
        let marker = self.dir.join(dropped_file(d));
        if let Err(err) =
            trackshift_crypto::filestore::write_atomic(&marker, e.to_string().as_bytes(), 0o644)
        {
            return Err(GatewayError::RecordingDrop { uri, source: err });
        }
        warn!(tenant = %self.tenant, job = %self.id, correlation_id = %self.correlation, trace_id = self.trace.as_deref(), destination = %uri, error = %e, "destination dropped from the job");
        self.dests[d].metrics.dropped();
        // Leave nothing behind there: partial objects are aborted.
        self.abort_dest(d).await;
        if self.live().is_empty() {
            return Err(GatewayError::AllDestinationsFailed {
                uri,
                source: Box::new(e),
            });
        }
        Ok(())
    }

    /// Writes a chunk to every live destination at once (the same `Bytes`, no copy).
    pub(super) async fn write_all(
        &self,
        file: u32,
        offset: u64,
        data: bytes::Bytes,
    ) -> Result<(), GatewayError> {
        let live = self.live();
        let writes = live.iter().map(|&d| {
            let data = data.clone();
            async move {
                let w = self.writer(d, file).await?;
                w.write_at(offset, data).await.map_err(GatewayError::from)
            }
        });
        let results = futures::future::join_all(writes).await;
        for (d, r) in live.into_iter().zip(results) {
            match r {
                Ok(()) => self.dests[d].metrics.written(data.len()),
                Err(e) => {
                    self.dests[d]
                        .metrics
                        .error("write", super::dest_metrics::is_transient(&e));
                    self.drop_dest(d, e).await?;
                }
            }
        }
        Ok(())
    }

    /// Makes file `file` durable at every live destination.
    pub(super) async fn sync_all(&self, file: u32) -> Result<(), GatewayError> {
        for d in self.live() {
            let r = async {
                self.writer(d, file)
                    .await?
                    .sync()
                    .await
                    .map_err(GatewayError::from)
            };
            if let Err(e) = r.await {
                self.dests[d]
                    .metrics
                    .error("sync", super::dest_metrics::is_transient(&e));
                self.drop_dest(d, e).await?;
            }
        }
        Ok(())
    }

    pub(super) fn fail(&self, reason: String) {
        let mut f = self.failed.lock().expect("job lock");
        if f.is_none() {
            *f = Some(reason);
        }
    }
}

impl crate::quota::Occupies for HeldJob {
    fn occupies(&self) -> bool {
        // A finish in progress holds the lock: the job still counts.
        self.failed.lock().expect("job lock").is_none()
            && !self.cancelled.load(Ordering::Relaxed)
            && self.finished.try_lock().map_or(true, |f| f.is_none())
    }
}

/// The jobs held now (see `Shared::jobs`), with entries of dropped jobs pruned as it grows.
#[derive(Default)]
pub(super) struct JobMap {
    pub(super) jobs: HashMap<(String, String), std::sync::Weak<HeldJob>>,
    /// Prune dropped entries when the map reaches this size.
    pub(super) prune_at: usize,
}

impl JobMap {
    pub(super) fn get(&self, key: &(String, String)) -> Option<Arc<HeldJob>> {
        self.jobs.get(key).and_then(std::sync::Weak::upgrade)
    }

    pub(super) fn remove(&mut self, key: &(String, String)) {
        self.jobs.remove(key);
    }

    pub(super) fn insert(&mut self, key: (String, String), job: std::sync::Weak<HeldJob>) {
        if self.jobs.len() >= self.prune_at {
            self.jobs.retain(|_, j| j.strong_count() > 0);
            self.prune_at = (2 * self.jobs.len()).max(64);
        }
        self.jobs.insert(key, job);
    }
}

impl Shared {
    pub(super) fn connector(
        &self,
        dest: &trackshift_connectors::Destination,
        verify: VerifyMode,
        tenant: &str,
    ) -> Result<Arc<dyn Connector>, GatewayError> {
        let mut cache = self.connector_cache.lock().expect("connector cache lock");
        // A tenant with its own credentials gets connectors of its own, made again after
        // a reload of the tenant file (the credentials may have changed).
        let tenants = self.tenants.current();
        let (settings, owner) = match tenants.credentials.get(tenant) {
            Some(s) => (s.clone(), format!("{tenant}#{}", tenants.generation)),
            None => (trackshift_connectors::Settings::Process, String::new()),
        };
        let key = (dest.clone(), verify, owner);
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let c = (self.connectors)(dest, verify, &settings)?;
        // Bounded: past the limit, forget connectors no job holds any more.
        if cache.len() >= CONNECTOR_CACHE_MAX {
            cache.retain(|_, c| Arc::strong_count(c) > 1);
        }
        cache.insert(key, c.clone());
        Ok(c)
    }

    pub(super) async fn open_job(
        self: &Arc<Self>,
        tenant: &str,
        open: OpenJob,
    ) -> Result<Arc<HeldJob>, GatewayError> {
        let state = ReceiverJob::new(open.clone())?;
        let tenants = self.tenants.current();
        let entry = tenants
            .file
            .get(tenant)
            .ok_or_else(|| GatewayError::UnknownTenant(tenant.to_string()))?;
        // Parsed and checked once: the connectors are built from these typed values.
        let destinations = entry
            .admit(
                JobAsk {
                    source: None,
                    destinations: &open.destinations,
                    classification: open.classification.as_deref(),
                },
                None,
            )?
            .destinations;
        // A job may ask for fail-closed delivery; it cannot relax a strict gateway.
        let verify = match (self.verify, open.strict) {
            (VerifyMode::Size, Some(true)) => VerifyMode::Strict,
            (v, _) => v,
        };
        let key = (tenant.to_string(), open.job_id.clone());
        // Opens of one job run one at a time; opens of different jobs run side by side (the
        // map of held jobs is locked only to look up and to insert, never across I/O).
        let gate = OpenGate::enter(self, &key).await;
        {
            let mut jobs = self.jobs.lock().expect("jobs lock");
            // A job that failed (say the disk filled up) is reloaded from its directory
            // when opened again, so it resumes from the chunks it holds once the cause is
            // fixed.
            if jobs
                .get(&key)
                .is_some_and(|j| j.failed.lock().expect("job lock").is_some())
            {
                jobs.remove(&key);
            }
            if let Some(job) = jobs.get(&key) {
                if !job.open().same_job(&open) {
                    return Err(GatewayError::JobConflict(open.job_id.clone()));
                }
                return Ok(job);
            }
        }
        let dir = self.data_dir.join("jobs").join(tenant).join(&open.job_id);
        // The job directory's reads, writes and fsyncs, off the runtime's threads.
        let loaded = {
            let (dir, open, tenant) = (dir.clone(), open.clone(), tenant.to_string());
            tokio::task::spawn_blocking(move || load_job_dir(&tenant, &dir, &open, state))
                .await
                .expect("job directory task does not panic")?
        };
        let LoadedDir {
            state,
            resume,
            finished,
        } = loaded;
        // Files with chunks held from before may have partial objects at the destinations.
        let touched: Vec<bool> = (0..open.files.len())
            .map(|f| state.held_in_file(f as u32) > 0)
            .collect();
        let mut dests = Vec::with_capacity(open.destinations.len());
        for dest in &destinations {
            let connector = self.connector(dest, verify, tenant)?;
            let dropped = fs::read_to_string(dir.join(dropped_file(dests.len()))).ok();
            if let Some(reason) = dropped {
                // Dropped before a restart: it stays dropped (it lacks chunks acknowledged
                // since), and its server need not even be reachable now.
                dests.push(Dest {
                    metrics: super::dest_metrics::DestMetrics::for_uri(connector.uri()),
                    connector,
                    writers: (0..open.files.len())
                        .map(|_| WriterSlot::new(false))
                        .collect(),
                    failed: Mutex::new(Some(reason)),
                });
                continue;
            }
            for f in &open.files {
                let min = connector.min_chunk_size(f.size);
                if f.size > open.chunk_size && open.chunk_size < min {
                    return Err(GatewayError::ChunkTooSmall {
                        destination: connector.uri().to_string(),
                        path: f.path.clone(),
                        size: f.size,
                        min,
                        chunk: open.chunk_size,
                    });
                }
            }
            connector.prepare().await?;
            dests.push(Dest {
                metrics: super::dest_metrics::DestMetrics::for_uri(connector.uri()),
                connector,
                writers: touched.iter().map(|&t| WriterSlot::new(t)).collect(),
                failed: Mutex::new(None),
            });
        }
        let (commit_tx, commit_rx) = mpsc::unbounded_channel();
        let job = Arc::new(HeldJob {
            tenant: tenant.to_string(),
            id: open.job_id.clone(),
            correlation: open.correlation_id.clone().unwrap_or_else(|| "-".into()),
            trace: open.trace_id(),
            dir,
            state: Mutex::new(state),
            dests,
            strict: verify != VerifyMode::Size,
            resume,
            commit_tx,
            finished: tokio::sync::Mutex::new(finished),
            failed: Mutex::new(None),
            cancelled: std::sync::atomic::AtomicBool::new(false),
            open_files: (0..open.files.len()).map(|_| Mutex::new(None)).collect(),
        });
        // The committer holds the job weakly: it ends (closing the chunk log) once the job
        // is dropped, when no connection or finish holds it any more.
        tokio::spawn(committer(Arc::downgrade(&job), commit_rx));
        self.jobs
            .lock()
            .expect("jobs lock")
            .insert(key.clone(), Arc::downgrade(&job));
        drop(gate);
        Ok(job)
    }
}

/// Key of a job held by the gateway: (tenant, job id).
pub(super) type JobKey = (String, String);

/// A place in the queue of opens of one job (see `Shared::opening`): held, it keeps other
/// opens of the same job waiting; dropped, it removes the job's lock when nobody waits.
pub(super) struct OpenGate<'a> {
    pub(super) shared: &'a Shared,
    pub(super) key: &'a JobKey,
    pub(super) lock: Arc<tokio::sync::Mutex<()>>,
    pub(super) _held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<'a> OpenGate<'a> {
    pub(super) async fn enter(shared: &'a Shared, key: &'a JobKey) -> Self {
        let lock = (shared.opening.lock().expect("opening lock"))
            .entry(key.clone())
            .or_default()
            .clone();
        let held = lock.clone().lock_owned().await;
        Self {
            shared,
            key,
            lock,
            _held: Some(held),
        }
    }
}

impl Drop for OpenGate<'_> {
    fn drop(&mut self) {
        self._held = None;
        let mut opening = self.shared.opening.lock().expect("opening lock");
        // Clones are taken under this lock only: two left are the map's and this one.
        if Arc::strong_count(&self.lock) == 2 {
            opening.remove(self.key);
        }
    }
}
