//! Every metric family the process exports, described once with its HELP text and unit
//! (`promtool check metrics` takes the exposition as it is), the build information, and
//! the process's own figures (CPU, memory, descriptors, threads) collected at each scrape.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Registers the descriptions and `trackshift_build_info` (called once, with the recorder).
pub fn describe() {
    describe_histogram!(
        "trackshift_chunk_latency_seconds",
        Unit::Seconds,
        "Time from sending a chunk to its acknowledgement by the gateway (written and synced at every destination of the job), per tenant."
    );
    describe_counter!(
        "trackshift_bytes_acknowledged_total",
        Unit::Bytes,
        "Bytes of job data the gateway acknowledged as durable, per tenant."
    );
    describe_counter!(
        "trackshift_job_attempts_total",
        "Job attempts ended by this worker, per tenant and outcome."
    );
    describe_histogram!(
        "trackshift_job_attempt_duration_seconds",
        Unit::Seconds,
        "Time one attempt of a job took on this worker, per tenant and outcome."
    );
    describe_histogram!(
        "trackshift_job_duration_seconds",
        Unit::Seconds,
        "Time from a job's submission to its completion (queueing, attempts and backoffs), per tenant."
    );
    describe_histogram!(
        "trackshift_job_queue_wait_seconds",
        Unit::Seconds,
        "Time a job waited to be claimed (since submission, or since its retry's backoff ended), per tenant."
    );
    describe_counter!(
        "trackshift_jobs_sealed_total",
        "Jobs whose manifest and receipts the gateway recorded in the ledger, per tenant, fail-closed mode (strict), data classification and manifest signature algorithm."
    );
    describe_counter!(
        "trackshift_tls_key_exchanges_total",
        "TLS handshakes the gateway completed, by key-exchange group (X25519MLKEM768 is the post-quantum hybrid)."
    );
    describe_gauge!(
        "trackshift_quic_connections",
        "Open QUIC connections, by side (gateway: accepted; sender: opened by this process's workers)."
    );
    describe_histogram!(
        "trackshift_quic_rtt_seconds",
        Unit::Seconds,
        "Smoothed round-trip time of each open QUIC connection, sampled every second, by side."
    );
    describe_histogram!(
        "trackshift_quic_congestion_window_bytes",
        Unit::Bytes,
        "Congestion window of each open QUIC connection, sampled every second, by side."
    );
    describe_counter!(
        "trackshift_quic_sent_packets_total",
        "QUIC packets sent, by side."
    );
    describe_counter!(
        "trackshift_quic_lost_packets_total",
        "QUIC packets declared lost, by side."
    );
    describe_counter!(
        "trackshift_quic_lost_bytes_total",
        Unit::Bytes,
        "Bytes in QUIC packets declared lost, by side."
    );
    describe_counter!(
        "trackshift_quic_congestion_events_total",
        "Congestion events (the controller cut its window), by side."
    );
    describe_counter!(
        "trackshift_jobs_purged_total",
        "Finished jobs removed from the job store past the job history (serve --job-history)."
    );
    describe_gauge!(
        "trackshift_jobs",
        "Jobs in the job store, per tenant and state (read from the store at scrape time)."
    );
    describe_gauge!("trackshift_running_jobs", "Jobs this worker runs now.");
    describe_gauge!(
        "trackshift_ledger_size",
        "Entries in the ledger (the latest signed checkpoint's tree size)."
    );
    describe_gauge!(
        "trackshift_tenant_rate_bytes_per_second",
        "This worker's part of a tenant's bandwidth quota, in bytes per second."
    );
    describe_gauge!(
        "trackshift_worker_in_flight_budget_bytes",
        Unit::Bytes,
        "Bytes of chunks this worker may have in flight at once (the budget that follows latency)."
    );
    describe_counter!(
        trackshift_engine::pool::MADE_METRIC,
        "Chunk buffers allocated because the pool had none of the size free."
    );
    describe_gauge!(
        trackshift_engine::pool::IDLE_METRIC,
        Unit::Bytes,
        "Bytes of chunk buffers idle in the pool."
    );
    describe_gauge!(
        "trackshift_tsa_last_stamped_size",
        "Tree size of the last checkpoint time-stamped by the outside authority (serve --tsa)."
    );
    describe_gauge!(
        "trackshift_tsa_unstamped_entries",
        "Ledger entries newer than the last time-stamp."
    );
    describe_gauge!(
        "trackshift_tsa_last_success_timestamp_seconds",
        Unit::Seconds,
        "When the time-stamp authority last gave a checkpoint a time-stamp (Unix time)."
    );
    describe_counter!(
        "trackshift_tsa_failures_total",
        "Time-stamp requests that failed (authority down, refused, or an answer that does not verify)."
    );
    describe_counter!(
        "trackshift_destination_bytes_total",
        Unit::Bytes,
        "Bytes written to a destination (label: its scheme and host only)."
    );
    describe_counter!(
        "trackshift_destination_writes_total",
        "Chunk writes to a destination."
    );
    describe_counter!(
        "trackshift_destination_errors_total",
        "Failed writes, syncs and commits at a destination, by operation and kind (transient: retried; permanent)."
    );
    describe_counter!(
        "trackshift_destination_dropped_total",
        "Times a destination was dropped from a job (non-strict fan-out)."
    );
    describe_counter!(
        "trackshift_destination_receipts_total",
        "Receipts per destination and status (confirmed or failed)."
    );
    describe_histogram!(
        "trackshift_destination_commit_seconds",
        Unit::Seconds,
        "Time a job's commit at a destination took (files made durable and visible under their names)."
    );
    describe_gauge!(
        "trackshift_tls_certificate_expiry_timestamp_seconds",
        Unit::Seconds,
        "When the gateway's TLS certificate expires (Unix time)."
    );
    describe_gauge!(
        "trackshift_signing_key_activated_timestamp_seconds",
        Unit::Seconds,
        "When the active manifest or receipt signing key became valid (Unix time), by purpose: its age says when a rotation is due."
    );
    describe_gauge!(
        "trackshift_signing_key_expiry_timestamp_seconds",
        Unit::Seconds,
        "When the active signing key stops being valid (Unix time), by purpose; only for keys with an end."
    );
    describe_gauge!(
        "trackshift_ledger_checkpoint_timestamp_seconds",
        Unit::Seconds,
        "When the latest ledger checkpoint was signed (its cosignature's time, Unix time)."
    );
    describe_counter!(
        "trackshift_http_requests_total",
        "HTTP requests answered, by route template, method and status class."
    );
    describe_histogram!(
        "trackshift_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by route template and method."
    );
    describe_gauge!(
        "trackshift_build_info",
        "Always 1; the labels say which build runs."
    );
    metrics::gauge!(
        "trackshift_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "target" => std::env::consts::ARCH,
    )
    .set(1.0);
    process().describe();
}

/// The process collector (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_open_fds`, `process_threads`, ...).
pub fn process() -> &'static metrics_process::Collector {
    static C: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    C.get_or_init(metrics_process::Collector::default)
}
