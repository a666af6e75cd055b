//! Helpers shared by the end-to-end tests: run the binary, start a gateway child, plain
//! HTTP GETs.
#![allow(dead_code)]

pub mod api;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_trackshift")
}

pub fn run(args: &[&str], cwd: &Path) -> (i32, String, String) {
    run_with_env(args, cwd, &[])
}

/// `trackshift jobs submit SOURCE --dest DEST` at `gw` as the tenant with `key`, with
/// `extra` flags and `env`, run in `cwd`.
pub fn submit_job(
    gw: &Gateway,
    key: &str,
    dest: &str,
    source: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
    cwd: &Path,
) -> (i32, String, String) {
    let mut args = vec![
        "jobs", "submit", "--api", &gw.http, "--key", key, "--dest", dest,
    ];
    args.extend_from_slice(extra);
    args.push(source.to_str().unwrap());
    run_with_env(&args, cwd, env)
}

/// [`run`] with extra environment variables.
pub fn run_with_env(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// The gateway child, killed when dropped.
pub struct Gateway {
    pub child: Child,
    pub quic: String,
    pub http: String,
    pub fingerprint: String,
    /// The operator key (from `DATA/operator.key`).
    pub operator_key: String,
    /// The operator listen address, when started with `--operator-http`.
    pub operator_http: Option<String>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_gateway(data: &Path) -> Gateway {
    start_gateway_with(data, &[])
}

/// Starts `trackshift serve` with extra environment variables.
pub fn start_gateway_with(data: &Path, env: &[(&str, &str)]) -> Gateway {
    start_gateway_full(data, env, &[], None)
}

/// Starts `trackshift serve` with extra environment variables and arguments, its log
/// (stderr) appended to `log` when given.
pub fn start_gateway_full(
    data: &Path,
    env: &[(&str, &str)],
    args: &[&str],
    log: Option<&Path>,
) -> Gateway {
    let stderr = match log {
        Some(p) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap(),
        ),
        None => Stdio::null(),
    };
    let mut cmd = Command::new(bin());
    cmd.envs(env.iter().copied());
    spawn_gateway(cmd, data, args, stderr, log)
}

/// Starts `trackshift serve` with none of this process's environment but PATH and HOME
/// (so no destination credentials but those of the tenants' own files).
pub fn start_gateway_without_credentials(data: &Path, args: &[&str]) -> Gateway {
    let mut cmd = Command::new(bin());
    cmd.env_clear();
    for var in ["PATH", "HOME"] {
        if let Ok(v) = std::env::var(var) {
            cmd.env(var, v);
        }
    }
    spawn_gateway(cmd, data, args, Stdio::null(), None)
}

/// Starts `cmd` as `trackshift serve` on `data` (loopback QUIC and HTTP) with `args`, and
/// waits until it is ready.
pub fn spawn_gateway(
    mut cmd: Command,
    data: &Path,
    args: &[&str],
    stderr: Stdio,
    log: Option<&Path>,
) -> Gateway {
    cmd.arg("serve");
    // A test that restarts a gateway at the same address passes its own `--listen`.
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    let mut child = cmd
        .args(["--http", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut quic, mut http, mut fingerprint, mut operator_http) = (None, None, None, None);
    let wants_operator_http = args.contains(&"--operator-http");
    while quic.is_none()
        || http.is_none()
        || fingerprint.is_none()
        || (wants_operator_http && operator_http.is_none())
    {
        let Some(line) = lines.next() else {
            let tail = log
                .and_then(|l| std::fs::read_to_string(l).ok())
                .map(|t| t.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
                .unwrap_or_default();
            panic!("the gateway exited before it was ready; its log ends:\n{tail}");
        };
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("gateway listening on ") {
            quic = rest.split_whitespace().next().map(str::to_string);
        } else if let Some(rest) = line.strip_prefix("certificate fingerprint: ") {
            fingerprint = Some(rest.trim().to_string());
        } else if let Some(i) = line.find("http://")
            && line.starts_with("operator HTTP")
        {
            operator_http = Some(line[i..].trim().to_string());
        } else if let Some(i) = line.find("http://") {
            http = Some(line[i..].trim().to_string());
        }
    }
    // Keep draining stdout so the gateway never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let operator_key = std::fs::read_to_string(data.join("operator.key"))
        .unwrap()
        .trim()
        .to_string();
    Gateway {
        child,
        quic: quic.unwrap(),
        http: http.unwrap(),
        fingerprint: fingerprint.unwrap(),
        operator_key,
        operator_http,
    }
}

/// A plain HTTP/1.1 GET: (status, body).
pub fn get(base: &str, path: &str) -> (u16, Vec<u8>) {
    get_with_key(base, path, None)
}

/// A plain HTTP/1.1 GET with `Authorization: Bearer KEY` when given: (status, body).
pub fn get_with_key(base: &str, path: &str, key: Option<&str>) -> (u16, Vec<u8>) {
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    let auth = key.map_or_else(String::new, |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    (status, resp[split + 4..].to_vec())
}

/// What a job names for `base` (an operator's destination URI, perhaps with settings in
/// its query) with `sub` appended: the path only, the settings stay the operator's.
pub fn job_dest(base: &str, sub: &str) -> String {
    let path = base.split_once('?').map_or(base, |(p, _)| p);
    format!("{path}/{sub}")
}

/// `base` (a destination URI, perhaps with a query) with `sub` appended to its path.
pub fn under(base: &str, sub: &str) -> String {
    match base.split_once('?') {
        Some((path, query)) => format!("{path}/{sub}?{query}"),
        None => format!("{base}/{sub}"),
    }
}

/// Arguments of `trackshift send SRC` to a gateway started by [`start_gateway`], with the
/// tenant token from `token_file`, to `dests`, writing documents into `out_dir`.
pub fn send_args(
    gw: &Gateway,
    token_file: &Path,
    src: &str,
    dests: &[&str],
    out_dir: Option<&str>,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "send",
        src,
        "--to",
        &gw.quic,
        "--fingerprint",
        &gw.fingerprint,
        "--token-file",
        token_file.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for d in dests {
        args.extend(["--dest".to_string(), d.to_string()]);
    }
    if let Some(o) = out_dir {
        args.extend(["--out-dir".to_string(), o.to_string()]);
    }
    args
}

/// Runs `trackshift send SRC` (in `dir`) to `dest` at `gw` with the tenant token in
/// `token_file`, documents into `out_dir` when given, and asserts it succeeded.
pub fn send_ok(
    dir: &Path,
    gw: &Gateway,
    token_file: &Path,
    src: &str,
    dest: &str,
    out_dir: Option<&str>,
) {
    let args = send_args(gw, token_file, src, &[dest], out_dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run(&args, dir);
    assert_eq!(code, 0, "send {src}: {out}{err}");
}

/// Runs `trackshift serve` on `data` (loopback QUIC and HTTP) and waits for it to exit,
/// for starts that must be refused: (exit code, stdout, stderr). Panics if it is still
/// running after 30 s (it started when it should not have).
pub fn serve_until_exit(data: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut child = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the gateway started when it should have refused: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes a secret file the way operators must: owner-only (0600).
pub fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A fresh database on the test PostgreSQL server (`scripts/test-servers.sh start postgres`),
/// reached over TLS with the server's certificate verified.
pub async fn postgres_database() -> String {
    let url = std::env::var("TRACKSHIFT_TEST_POSTGRES").expect(
        "TRACKSHIFT_TEST_POSTGRES is not set: start the server with `scripts/test-servers.sh start postgres` \
         and source `scripts/test-servers.sh env` (scripts/test.sh does both)",
    );
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let db = format!("ts_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let ca = std::env::var("TRACKSHIFT_TEST_POSTGRES_CA")
        .expect("TRACKSHIFT_TEST_POSTGRES_CA is not set: source `scripts/test-servers.sh env`");
    format!(
        "{}/{db}?sslmode=verify-full&sslrootcert={ca}",
        url.rsplit_once('/').unwrap().0
    )
}

/// Makes `root/src` and `root/out` and the gateway data directory `root/gw` with one tenant,
/// `acme` (key `key`), reading beneath `root/src` and writing beneath `file://root/out/`
/// and to `null://`. Returns the data directory.
pub fn acme_tenant(root: &Path, key: &str) -> std::path::PathBuf {
    use trackshift_engine::tenants::{DestinationRule, TenantEntry, TenantFile};
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::create_dir_all(root.join("out")).unwrap();
    let data = root.join("gw");
    TenantFile {
        tenants: vec![TenantEntry {
            sources: vec![root.join("src")],
            destinations: Some(vec![
                DestinationRule::prefix(format!("file://{}/", root.join("out").display())),
                DestinationRule::prefix("null://"),
            ]),
            ..TenantEntry::new("acme", key)
        }],
    }
    .save(&data)
    .unwrap();
    data
}
