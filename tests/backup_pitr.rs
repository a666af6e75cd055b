//! PostgreSQL mode: WAL archiving and a point-in-time recovery of the database that holds
//! the job store and the shared ledger, with the real PostgreSQL (the binaries that
//! `scripts/test-servers.sh start postgres` installs; this test runs clusters of its own,
//! so it disturbs no shared server). Jobs run through a gateway with `--store`, a time is
//! noted, more jobs run; the base backup plus the archived WAL recovered to that time hold
//! exactly the ledger of the first jobs (`ledger verify --store` clean, the checkpoint the
//! gateway served then), and a gateway on the recovered database carries on consistently.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::api::Api;
use common::{run, start_gateway_full};
use trackshift_engine::tenants::{DestinationRule, TenantEntry, TenantFile};

const ACME: &str = "acme-key-0123456789";

/// The newest installed PostgreSQL's `bin` directory.
fn pg_bin() -> PathBuf {
    let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: `scripts/test-servers.sh start postgres` installs it")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    bins.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    bins.pop().expect("no PostgreSQL server binaries")
}

/// Runs a PostgreSQL program as the `postgres` user (the server refuses root).
fn as_postgres(program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"])
        .arg(pg_bin().join(program))
        .args(args);
    cmd
}

fn ok(mut cmd: Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One PostgreSQL server on a data directory of its own, stopped (fast shutdown) on drop.
struct Cluster {
    child: Child,
    port: u16,
    data: PathBuf,
}

impl Cluster {
    fn start(data: &Path, port: u16, log: &Path) -> Self {
        let log = std::fs::File::create(log).unwrap();
        let child = as_postgres(
            "postgres",
            &[
                "-D",
                data.to_str().unwrap(),
                "-p",
                &port.to_string(),
                "-k",
                data.to_str().unwrap(),
                "-c",
                "listen_addresses=127.0.0.1",
            ],
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
        let cluster = Self {
            child,
            port,
            data: data.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = as_postgres(
                "pg_isready",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "trackshift",
                ],
            )
            .output()
            .unwrap();
            if ready.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL on {port} never got ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    fn url(&self) -> String {
        format!("postgres://trackshift@127.0.0.1:{}/postgres", self.port)
    }

    async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

    /// Stops the server (fast shutdown) and waits for it.
    fn stop(mut self) {
        self.shutdown();
    }

    /// `pg_ctl stop -m fast` (runuser does not pass a signal on to the server).
    fn shutdown(&mut self) {
        let _ = as_postgres(
            "pg_ctl",
            &[
                "stop",
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
            ],
        )
        .stdout(Stdio::null())
        .status();
        let _ = self.child.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.shutdown();
        }
    }
}

fn cli(args: &[&str], cwd: &Path) -> String {
    let (code, out, err) = run(args, cwd);
    assert_eq!(code, 0, "{args:?}: {out}{err}");
    out
}

fn size_of(checkpoint: &str) -> u64 {
    checkpoint.lines().nth(1).unwrap().parse().unwrap()
}

async fn run_jobs(api: &Api, root: &Path, from: usize, n: usize) {
    let mut ids = Vec::new();
    for i in from..from + n {
        let src = root.join(format!("src/f{}.bin", i % 4));
        ids.push(api.submit(&src, &["null://".to_string()]).await);
    }
    for id in &ids {
        assert_eq!(api.wait(id).await, "completed", "job {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_in_time_recovery_of_the_shared_ledger_verifies_and_carries_on() {
    // PostgreSQL runs as its own user: everything it touches lives in a directory it owns.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let pg = root.join("pg");
    let archive = pg.join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    ok({
        let mut c = Command::new("chown");
        c.args(["-R", "postgres:postgres", pg.to_str().unwrap()]);
        c
    });
    let primary_dir = pg.join("primary");
    ok(as_postgres(
        "initdb",
        &[
            "-D",
            primary_dir.to_str().unwrap(),
            "-U",
            "trackshift",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "-N",
        ],
    ));
    let conf = format!(
        "\nwal_level = replica\narchive_mode = on\narchive_command = 'test ! -f {a}/%f && cp %p {a}/%f'\nfsync = off\nmax_connections = 100\n",
        a = archive.display()
    );
    append(&primary_dir.join("postgresql.conf"), &conf);
    let primary = Cluster::start(&primary_dir, free_port(), &pg.join("primary.log"));

    // The base backup, taken before any job.
    let base = pg.join("base");
    ok(as_postgres(
        "pg_basebackup",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "trackshift",
            "-D",
            base.to_str().unwrap(),
            "-X",
            "stream",
            "-c",
            "fast",
        ],
    ));

    // A gateway on it: jobs, then the time to recover to, then more jobs.
    std::fs::create_dir_all(root.join("src")).unwrap();
    for i in 0..4 {
        std::fs::write(root.join(format!("src/f{i}.bin")), vec![i as u8; 5000 + i]).unwrap();
    }
    let data = root.join("gw");
    TenantFile {
        tenants: vec![TenantEntry {
            sources: vec![root.join("src")],
            destinations: Some(vec![DestinationRule::prefix("null://")]),
            ..TenantEntry::new("acme", ACME)
        }],
    }
    .save(&data)
    .unwrap();
    let url = primary.url();
    let gw = start_gateway_full(&data, &[], &["--store", &url], Some(&root.join("gw.log")));
    let api = Api::new(&gw.http, ACME);
    run_jobs(&api, root, 0, 6).await;
    let at_target = cli(&["ledger", "checkpoint", "--gateway", &gw.http], root);
    let db = primary.client().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let target: String = db
        .query_one("SELECT now()::text", &[])
        .await
        .unwrap()
        .get(0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    run_jobs(&api, root, 6, 6).await;
    let later = cli(&["ledger", "checkpoint", "--gateway", &gw.http], root);
    assert!(size_of(&later) > size_of(&at_target));
    drop(gw);
    // Every WAL segment up to now in the archive.
    let segment: String = db
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .unwrap()
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !archive.join(&segment).exists() {
        assert!(Instant::now() < deadline, "{segment} was never archived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(db);
    primary.stop();

    // Point-in-time recovery: the base backup, the archive, the target time.
    let recovered_dir = pg.join("recovered");
    ok({
        let mut c = Command::new("cp");
        c.args([
            "-a",
            base.to_str().unwrap(),
            recovered_dir.to_str().unwrap(),
        ]);
        c
    });
    append(
        &recovered_dir.join("postgresql.conf"),
        &format!(
            "\narchive_mode = off\nrestore_command = 'cp {a}/%f %p'\nrecovery_target_time = '{target}'\nrecovery_target_action = 'promote'\n",
            a = archive.display()
        ),
    );
    std::fs::write(recovered_dir.join("recovery.signal"), "").unwrap();
    ok({
        let mut c = Command::new("chown");
        c.args(["-R", "postgres:postgres", recovered_dir.to_str().unwrap()]);
        c
    });
    let recovered = Cluster::start(&recovered_dir, free_port(), &pg.join("recovered.log"));
    let db = recovered.client().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while db
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(Instant::now() < deadline, "recovery never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(pg.join("recovered.log")).unwrap();
    assert!(log.contains("recovery stopping before commit"), "{log}");

    // The recovered ledger verifies and is the one of the target time.
    cli(
        &[
            "keys",
            "export-public",
            "--dir",
            data.join("keys").to_str().unwrap(),
            "--ledger",
            data.join("ledger/keys").to_str().unwrap(),
            "--out",
            "pk.json",
        ],
        root,
    );
    let url = recovered.url();
    let verify = [
        "ledger",
        "verify",
        "--store",
        &url,
        "--public-keys",
        "pk.json",
    ];
    let out = cli(&verify, root);
    assert!(out.starts_with("OK"), "{out}");
    assert!(
        out.contains(&format!(": {} entries", size_of(&at_target))),
        "recovered to the target time: {out} (then: {at_target})"
    );

    // A gateway on the recovered database: it serves the target time's checkpoint, runs
    // jobs, and its later checkpoint is consistent with it.
    let gw = start_gateway_full(&data, &[], &["--store", &url], Some(&root.join("gw.log")));
    let served = cli(&["ledger", "checkpoint", "--gateway", &gw.http], root);
    assert_eq!(size_of(&served), size_of(&at_target));
    let api = Api::new(&gw.http, ACME);
    run_jobs(&api, root, 20, 2).await;
    let after = cli(&["ledger", "checkpoint", "--gateway", &gw.http], root);
    std::fs::write(root.join("cp-target"), &at_target).unwrap();
    std::fs::write(root.join("cp-after"), &after).unwrap();
    let out = cli(
        &[
            "ledger",
            "consistency",
            "cp-target",
            "cp-after",
            "--public-keys",
            "pk.json",
            "--gateway",
            &gw.http,
        ],
        root,
    );
    assert!(out.starts_with("OK"), "{out}");
    let out = cli(&verify, root);
    assert!(out.starts_with("OK"), "{out}");
    drop(gw);
    drop(db);
    recovered.stop();
}

fn append(path: &Path, text: &str) {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}
