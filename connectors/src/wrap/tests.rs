//! Unit tests of `wrap`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::LocalConnector;

fn spec(path: &str, size: u64) -> ObjectSpec {
    ObjectSpec {
        tenant: "t".into(),
        job_id: "job-wrap".into(),
        path: path.into(),
        size,
        chunk_size: 64 << 10,
        state_file: None,
    }
}

fn local(dir: &std::path::Path) -> Arc<dyn Connector> {
    Arc::new(LocalConnector::new(dir.to_str().unwrap()).unwrap())
}

#[tokio::test]
async fn prefix_keeps_objects_under_it_and_refuses_escapes() {
    let tmp = tempfile::tempdir().unwrap();
    let c = wrap(
        local(tmp.path()),
        &Wrapping {
            prefix: Some("tenants/acme".into()),
            ..Wrapping::default()
        },
    )
    .unwrap();
    let w = c.open(&spec("a/b.txt", 5), false).await.unwrap();
    w.write_at(0, Bytes::from_static(b"hello")).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(
        std::fs::read(tmp.path().join("tenants/acme/a/b.txt")).unwrap(),
        b"hello"
    );
    assert_eq!(c.stat("a/b.txt").await.unwrap(), Some(5));
    for bad in ["../other/x", "/etc/passwd", "a/../../x"] {
        assert!(c.open(&spec(bad, 1), false).await.is_err(), "{bad}");
    }
    for bad in ["..", "../x", "", "a//b"] {
        assert!(
            PrefixConnector::new(local(tmp.path()), bad).is_err(),
            "{bad:?}"
        );
    }
}

/// Counts writes in flight, holding each for a moment.
#[derive(Debug, Default)]
struct Counting {
    now: AtomicUsize,
    max: AtomicUsize,
}

struct CountingWriter(Arc<Counting>);

#[async_trait]
impl Connector for Arc<Counting> {
    fn uri(&self) -> &str {
        "counting://"
    }
    async fn check(&self) -> Result<(), ConnectorError> {
        Ok(())
    }
    async fn stat(&self, _: &str) -> Result<Option<u64>, ConnectorError> {
        Ok(None)
    }
    async fn read_back(&self, _: &str) -> Result<(u64, [u8; 32]), ConnectorError> {
        Ok((0, [0; 32]))
    }
    async fn open(&self, _: &ObjectSpec, _: bool) -> Result<Arc<dyn ObjectWriter>, ConnectorError> {
        Ok(Arc::new(CountingWriter(self.clone())))
    }
}

#[async_trait]
impl ObjectWriter for CountingWriter {
    async fn write_at(&self, _: u64, _: Bytes) -> Result<(), ConnectorError> {
        let n = self.0.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.max.fetch_max(n, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.0.now.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
    async fn sync(&self) -> Result<(), ConnectorError> {
        Ok(())
    }
    async fn commit(&self) -> Result<Confirmation, ConnectorError> {
        Ok(Confirmation {
            size: 0,
            etag: None,
            blake3: None,
        })
    }
    async fn abort(&self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// The most writes in flight when 4 objects get 8 concurrent chunk writes each.
async fn max_in_flight(limit: Option<usize>) -> usize {
    let counting = Arc::new(Counting::default());
    let c = wrap(
        Arc::new(counting.clone()),
        &Wrapping {
            concurrency: limit,
            ..Wrapping::default()
        },
    )
    .unwrap();
    let mut tasks = Vec::new();
    for obj in 0..4 {
        let w = c
            .open(&spec(&format!("o{obj}"), 1 << 20), false)
            .await
            .unwrap();
        for i in 0..8u64 {
            let w = w.clone();
            tasks.push(tokio::spawn(async move {
                w.write_at(i * 1024, Bytes::from_static(&[0u8; 1024])).await
            }));
        }
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    counting.max.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_limit_bounds_writes_in_flight_across_objects() {
    let unlimited = max_in_flight(None).await;
    assert!(
        unlimited > 3,
        "without a limit only {unlimited} were in flight"
    );
    let limited = max_in_flight(Some(3)).await;
    assert!(
        (1..=3).contains(&limited),
        "{limited} writes were in flight"
    );
    assert!(LimitConnector::new(Arc::new(Arc::new(Counting::default())), 0).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_limits_bound_every_connector_they_wrap() {
    let counting = Arc::new(Counting::default());
    let limits = Limits::new(&Wrapping {
        concurrency: Some(2),
        ..Wrapping::default()
    })
    .unwrap();
    let mut tasks = Vec::new();
    for job in 0..4 {
        // A connector per job, as the gateway makes them, all under one limit.
        let c = limits.wrap(Arc::new(counting.clone())).unwrap();
        let w = c
            .open(&spec(&format!("j{job}"), 1 << 20), false)
            .await
            .unwrap();
        for i in 0..6u64 {
            let w = w.clone();
            tasks.push(tokio::spawn(async move {
                w.write_at(i * 1024, Bytes::from_static(&[0u8; 1024])).await
            }));
        }
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let max = counting.max.load(Ordering::SeqCst);
    assert!((1..=2).contains(&max), "{max} writes were in flight");
}

#[tokio::test]
async fn a_rate_can_change_in_use_within_its_bounds() {
    let rate = ByteRate::new(1 << 20).unwrap();
    rate.set_rate(256 << 10).unwrap();
    assert_eq!(rate.rate(), 256 << 10);
    assert!(rate.set_rate(10).is_err());
    assert_eq!(rate.rate(), 256 << 10);
    // Taking within the first burst does not wait.
    tokio::time::timeout(Duration::from_secs(5), rate.take(20 << 10))
        .await
        .unwrap();
}

#[tokio::test]
async fn rate_limit_holds_writes_to_the_rate() {
    let counting = Arc::new(Counting::default());
    let c = wrap(
        Arc::new(counting),
        &Wrapping {
            bytes_per_second: Some(4 << 20),
            ..Wrapping::default()
        },
    )
    .unwrap();
    let w = c.open(&spec("x", 8 << 20), false).await.unwrap();
    let started = Instant::now();
    // 2 MiB at 4 MiB/s (burst 0.4 MiB): at least ~0.4 s.
    for i in 0..4u64 {
        w.write_at(i << 19, Bytes::from(vec![0u8; 512 << 10]))
            .await
            .unwrap();
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(380),
        "2 MiB took only {took:?}"
    );
    assert!(ThrottledConnector::new(Arc::new(Arc::new(Counting::default())), 10).is_err());
}

/// A wrapping of in-memory objects, as the conformance suite sees it.
struct Wrapped {
    name: &'static str,
    inner: crate::MemoryConnector,
    limits: Limits,
}

impl Wrapped {
    fn new(name: &'static str, w: Wrapping) -> Self {
        Self {
            name,
            inner: crate::MemoryConnector::new(),
            limits: Limits::new(&w).unwrap(),
        }
    }
}

impl crate::conformance::Subject for Wrapped {
    fn name(&self) -> &str {
        self.name
    }
    fn connector(&self, overwrite: bool, verify: crate::VerifyMode) -> Arc<dyn Connector> {
        let inner = self
            .inner
            .clone()
            .with_overwrite(overwrite)
            .with_verify(verify);
        self.limits.wrap(Arc::new(inner)).unwrap()
    }
    fn capabilities(&self) -> crate::conformance::Capabilities {
        crate::conformance::Capabilities::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_wrapper_keeps_the_connector_contract() {
    let prefix = Wrapped::new(
        "prefix",
        Wrapping {
            prefix: Some("tenants/acme".into()),
            ..Wrapping::default()
        },
    );
    crate::conformance::run_all(&prefix).await;
    // Everything the suite committed is under the prefix, and nothing else.
    let paths = prefix.inner.paths();
    assert!(!paths.is_empty());
    assert!(
        paths.iter().all(|p| p.starts_with("tenants/acme/")),
        "{paths:?}"
    );
    for (name, w) in [
        (
            "limit",
            Wrapping {
                concurrency: Some(2),
                ..Wrapping::default()
            },
        ),
        (
            "throttled",
            Wrapping {
                bytes_per_second: Some(1 << 30),
                ..Wrapping::default()
            },
        ),
        (
            "all three",
            Wrapping {
                prefix: Some("p".into()),
                concurrency: Some(1),
                bytes_per_second: Some(1 << 30),
            },
        ),
    ] {
        crate::conformance::run_all(&Wrapped::new(name, w)).await;
    }
}

#[tokio::test]
async fn wrappers_are_generic_over_what_they_wrap() {
    let inner = crate::MemoryConnector::new();
    // Concrete types all the way down: no `dyn` needed to wrap a connector.
    let c: LimitConnector<PrefixConnector<crate::MemoryConnector>> = LimitConnector::new(
        Arc::new(PrefixConnector::new(Arc::new(inner.clone()), "typed").unwrap()),
        1,
    )
    .unwrap();
    crate::conformance::put(&c, "a.txt", &Bytes::from_static(b"hello"), 1 << 20).await;
    assert_eq!(inner.paths(), ["typed/a.txt"]);
    assert_eq!(c.stat("a.txt").await.unwrap(), Some(5));
}
