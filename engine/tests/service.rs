//! A whole gateway built by `trackshift_engine::service` from one configuration, as
//! `serve`, `demo` and `bench` build theirs: the worker it sets up finds the gateway (on
//! loopback, by its pinned certificate) and runs a tenant's job to its destination.

use std::time::{Duration, Instant};

use trackshift_engine::gateway::GatewayConfig;
use trackshift_engine::jobs::runner::{RunnerConfig, now_ms};
use trackshift_engine::jobs::store::NewJob;
use trackshift_engine::jobs::{JobSpec, JobState};
use trackshift_engine::service::{Service, ServiceConfig};
use trackshift_engine::tenants::{DestinationRule, TenantEntry, TenantFile};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_from_one_configuration_runs_a_tenants_job_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let (src, out, data) = (root.join("src"), root.join("out"), root.join("gw"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(out.join("copy")).unwrap();
    std::fs::write(src.join("a.txt"), b"hello from the service test\n").unwrap();
    TenantFile {
        tenants: vec![TenantEntry {
            sources: vec![src.clone()],
            destinations: Some(vec![DestinationRule::prefix(format!(
                "file://{}",
                out.display()
            ))]),
            ..TenantEntry::new("acme", "acme-key-0123456789")
        }],
    }
    .save(&data)
    .unwrap();

    // Listening on every address: the worker must still reach it (on loopback).
    let mut rc = RunnerConfig::local("w1");
    rc.poll = Duration::from_millis(50);
    let service = Service::start(ServiceConfig {
        gateway: GatewayConfig::new("0.0.0.0:0".parse().unwrap(), &data),
        shared: None,
        worker: Some(rc),
    })
    .await
    .unwrap();
    assert_eq!(service.tenants.current().file.tenants.len(), 1);
    let jobs = service.jobs.expect("a worker was asked for");
    assert!(jobs.backend.starts_with("sqlite"), "{}", jobs.backend);
    assert!(data.join("jobs.db").exists());
    let g = service.gateway.clone();
    let serving = tokio::spawn(async move { g.serve().await });
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(jobs.runner.clone().run(stop_rx));

    let (job, created) = jobs
        .store
        .create(
            NewJob {
                traceparent: None,
                tenant: "acme".into(),
                spec: JobSpec {
                    source: src.clone(),
                    destinations: vec![format!("file://{}/copy", out.display())],
                    chunk_size: None,
                    priority: None,
                    classification: None,
                    strict: None,
                    max_attempts: Some(1),
                },
                correlation_id: None,
                idempotency_key: None,
                max_queued: None,
            },
            now_ms(),
        )
        .await
        .unwrap();
    assert!(created);
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let j = jobs.store.get("acme", &job.id).await.unwrap();
        if j.state.is_terminal() {
            break j;
        }
        assert!(Instant::now() < deadline, "job still {:?}", j.state);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done.state, JobState::Completed, "{done:?}");
    assert_eq!(
        std::fs::read(out.join("copy/a.txt")).unwrap(),
        b"hello from the service test\n"
    );
    let _ = stop.send(true);
    worker.await.unwrap();
    service.gateway.close();
    serving.abort();
}
