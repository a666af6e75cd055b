//! The two SQL databases the job store runs on, behind one small interface: SQLite (one
//! file, embedded) and PostgreSQL (shared by several gateways). Statements are written
//! once with `$1`-style parameters and portable SQL; a backend only runs them.

use std::path::Path;
use std::sync::Arc;

use super::store::StoreError;

/// A parameter or column value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    /// An integer (BIGINT).
    I(i64),
    /// Text.
    T(String),
    /// A NULL integer.
    NullI,
    /// A NULL text.
    NullT,
}

impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Val::I(v)
    }
}

impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Val::T(v.to_string())
    }
}

impl From<String> for Val {
    fn from(v: String) -> Self {
        Val::T(v)
    }
}

impl From<Option<String>> for Val {
    fn from(v: Option<String>) -> Self {
        v.map_or(Val::NullT, Val::T)
    }
}

impl From<Option<&str>> for Val {
    fn from(v: Option<&str>) -> Self {
        v.map_or(Val::NullT, Val::from)
    }
}

/// One result row.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<Val>);

impl Row {
    /// Column `i` as an integer (NULL: 0).
    pub fn i64(&self, i: usize) -> i64 {
        match self.0.get(i) {
            Some(Val::I(v)) => *v,
            _ => 0,
        }
    }

    /// Column `i` as text, if not NULL.
    pub fn opt_str(&self, i: usize) -> Option<String> {
        match self.0.get(i) {
            Some(Val::T(v)) => Some(v.clone()),
            _ => None,
        }
    }

    /// Column `i` as an integer, if not NULL.
    pub fn opt_i64(&self, i: usize) -> Option<i64> {
        match self.0.get(i) {
            Some(Val::I(v)) => Some(*v),
            _ => None,
        }
    }

    /// Column `i` as text (NULL: empty).
    pub fn str(&self, i: usize) -> String {
        self.opt_str(i).unwrap_or_default()
    }
}

/// An open transaction. Dropped without [`Tx::commit`], it rolls back.
#[async_trait::async_trait]
pub trait Tx: Send {
    /// Runs a query and returns its rows.
    async fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError>;
    /// Runs a statement and returns the rows it changed.
    async fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError>;
    /// Commits.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// A database the store runs on.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Begins a transaction that sees and locks consistently (SQLite: `BEGIN IMMEDIATE`;
    /// PostgreSQL: read committed with row locks).
    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError>;
    /// The suffix that locks a selected row against other claimers and skips rows they
    /// hold (`FOR UPDATE SKIP LOCKED` on PostgreSQL; nothing on SQLite, whose write
    /// transactions are exclusive).
    fn skip_locked(&self) -> &'static str;
    /// A short name for logs and `/ready`.
    fn name(&self) -> &'static str;
}

const SCHEMA_COMMON: &str = r"
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    priority BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    started_ms BIGINT,
    finished_ms BIGINT,
    not_before_ms BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    dead_letter BIGINT NOT NULL DEFAULT 0,
    worker TEXT,
    lease_until_ms BIGINT,
    bytes_total BIGINT NOT NULL DEFAULT 0,
    bytes_done BIGINT NOT NULL DEFAULT 0,
    manifest TEXT,
    receipts TEXT,
    idempotency_key TEXT
);
CREATE INDEX IF NOT EXISTS jobs_tenant_created ON jobs (tenant, created_ms DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, tenant, priority DESC, created_ms);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_ms);
CREATE INDEX IF NOT EXISTS jobs_started ON jobs (started_ms);
CREATE INDEX IF NOT EXISTS jobs_tenant_started ON jobs (tenant, started_ms);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (tenant, idempotency_key);
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tenant_locks (
    tenant TEXT PRIMARY KEY,
    submits BIGINT NOT NULL DEFAULT 0
);
";

// ---------------------------------------------------------------------------------------
// SQLite

/// SQLite in WAL mode: one file, one writer at a time. The connection lives on a thread of
/// its own and runs the statements sent to it in order, so that the runtime's worker threads
/// never wait for SQLite (page reads, WAL checkpoints) while chunks are waiting for them.
pub struct Sqlite {
    /// One transaction at a time (held from `BEGIN` to `COMMIT` or `ROLLBACK`).
    turn: Arc<tokio::sync::Mutex<()>>,
    thread: SqliteThread,
}

/// Work for the connection's thread.
type Work = Box<dyn FnOnce(&mut rusqlite::Connection) + Send>;

/// The way to the connection's thread; the thread ends when the last copy is dropped.
#[derive(Clone)]
struct SqliteThread(std::sync::mpsc::Sender<Work>);

fn thread_gone() -> StoreError {
    StoreError::Backend("the SQLite connection's thread has stopped".into())
}

impl SqliteThread {
    /// Runs `f` on the connection and waits for its result.
    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (reply, result) = tokio::sync::oneshot::channel();
        self.0
            .send(Box::new(move |c| {
                let _ = reply.send(f(c));
            }))
            .map_err(|_| thread_gone())?;
        result.await.map_err(|_| thread_gone())?
    }

    /// Runs `sql` on the connection without waiting (a rollback from `Drop`).
    fn post(&self, sql: &'static str) {
        let _ = self.0.send(Box::new(move |c| {
            let _ = c.execute_batch(sql);
        }));
    }
}

impl Sqlite {
    /// Opens (creating, owner-only) the database file and its schema. Its `-wal` and
    /// `-shm` files take the database file's mode.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        // Jobs name tenants' sources and destinations: not for other users of the host.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(StoreError::Backend(format!(
                    "creating {}: {e}",
                    path.display()
                )));
            }
        }
        let mut conn = rusqlite::Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA_COMMON)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS transitions (
                seq INTEGER PRIMARY KEY,
                job_id TEXT NOT NULL,
                at_ms BIGINT NOT NULL,
                from_state TEXT,
                to_state TEXT NOT NULL,
                reason TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS transitions_job ON transitions (job_id, seq);
             CREATE TABLE IF NOT EXISTS job_count_deltas (
                seq INTEGER PRIMARY KEY,
                tenant TEXT NOT NULL,
                state TEXT NOT NULL,
                d BIGINT NOT NULL);",
        )?;
        let (send, work) = std::sync::mpsc::channel::<Work>();
        std::thread::Builder::new()
            .name("trackshift-sqlite".into())
            .spawn(move || {
                while let Ok(w) = work.recv() {
                    w(&mut conn);
                }
            })
            .map_err(|e| StoreError::Backend(format!("starting the SQLite thread: {e}")))?;
        Ok(Self {
            turn: Arc::new(tokio::sync::Mutex::new(())),
            thread: SqliteThread(send),
        })
    }
}

/// Copies the SQLite job store at `src` into a new file `dst` (owner-only) through
/// SQLite's online backup API, while a gateway may be writing to it: the copy is one
/// consistent snapshot of the database (its committed transactions, those in the `-wal`
/// file included), taken in one step under a read transaction, so a writer neither waits
/// for it nor makes it start over. The source is opened read-only; the copy is then
/// checked with `PRAGMA integrity_check`.
pub fn backup_sqlite(src: &Path, dst: &Path) -> Result<(), StoreError> {
    use rusqlite::OpenFlags;
    use std::os::unix::fs::OpenOptionsExt as _;
    let from = rusqlite::Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    from.busy_timeout(std::time::Duration::from_secs(30))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .map_err(|e| StoreError::Backend(format!("creating {}: {e}", dst.display())))?;
    let mut to = rusqlite::Connection::open(dst)?;
    {
        let backup = rusqlite::backup::Backup::new(&from, &mut to)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match backup.step(-1)? {
                rusqlite::backup::StepResult::Done => break,
                _ if std::time::Instant::now() >= deadline => {
                    return Err(StoreError::Backend(format!(
                        "backing up {}: the database stayed locked for 60 s",
                        src.display()
                    )));
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }
    let check: String = to.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(StoreError::Backend(format!(
            "the copy of {} fails SQLite's integrity check: {check}",
            src.display()
        )));
    }
    // One file, no -wal beside it, whatever journal mode the source has.
    to.pragma_update(None, "journal_mode", "DELETE")?;
    to.close().map_err(|(_, e)| StoreError::from(e))?;
    std::fs::File::open(dst)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::Backend(format!("syncing {}: {e}", dst.display())))?;
    Ok(())
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

struct SqliteTx {
    /// The transaction's turn; `None` once committed.
    turn: Option<tokio::sync::OwnedMutexGuard<()>>,
    thread: SqliteThread,
}

/// `$1` → `?1` (SQLite reads `$1` as a named parameter).
fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

fn sqlite_params(params: &[Val]) -> Vec<rusqlite::types::Value> {
    use rusqlite::types::Value as V;
    params
        .iter()
        .map(|p| match p {
            Val::I(v) => V::Integer(*v),
            Val::T(v) => V::Text(v.clone()),
            Val::NullI | Val::NullT => V::Null,
        })
        .collect()
}

#[async_trait::async_trait]
impl Tx for SqliteTx {
    async fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError> {
        let (sql, params) = (sqlite_sql(sql), sqlite_params(params));
        self.thread.call(move |c| query_rows(c, &sql, params)).await
    }

    async fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        let (sql, params) = (sqlite_sql(sql), sqlite_params(params));
        self.thread
            .call(move |c| {
                let n = c
                    .prepare_cached(&sql)?
                    .execute(rusqlite::params_from_iter(params))?;
                Ok(n as u64)
            })
            .await
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        let turn = self.turn.take().expect("open transaction");
        let done = self.thread.call(|c| Ok(c.execute_batch("COMMIT")?)).await;
        if done.is_err() {
            // Not committed: the transaction must not stay open for the next one.
            self.thread.post("ROLLBACK");
        }
        drop(turn);
        done
    }
}

fn query_rows(
    conn: &rusqlite::Connection,
    sql: &str,
    params: Vec<rusqlite::types::Value>,
) -> Result<Vec<Row>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let n = stmt.column_count();
    let rows = stmt.query_map(rusqlite::params_from_iter(params), |r| {
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            v.push(match r.get_ref(i)? {
                rusqlite::types::ValueRef::Integer(x) => Val::I(x),
                rusqlite::types::ValueRef::Real(x) => Val::I(x as i64),
                rusqlite::types::ValueRef::Text(t) => {
                    Val::T(String::from_utf8_lossy(t).into_owned())
                }
                rusqlite::types::ValueRef::Null | rusqlite::types::ValueRef::Blob(_) => Val::NullT,
            });
        }
        Ok(Row(v))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        // Dropped before its commit (an error, a cancelled future): the rollback runs on
        // the connection's thread before anything the next transaction sends, because
        // the turn is released only after this (fields drop after `drop`).
        if self.turn.is_some() {
            self.thread.post("ROLLBACK");
        }
    }
}

#[async_trait::async_trait]
impl Backend for Sqlite {
    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError> {
        let turn = self.turn.clone().lock_owned().await;
        self.thread
            .call(|c| Ok(c.execute_batch("BEGIN IMMEDIATE")?))
            .await?;
        Ok(Box::new(SqliteTx {
            turn: Some(turn),
            thread: self.thread.clone(),
        }))
    }

    fn skip_locked(&self) -> &'static str {
        ""
    }

    fn name(&self) -> &'static str {
        "sqlite"
    }
}

// ---------------------------------------------------------------------------------------
// PostgreSQL

/// PostgreSQL through a connection pool; several gateways may share one database.
pub struct Postgres {
    pool: deadpool_postgres::Pool,
}

impl Postgres {
    /// Connects to `url` (`postgres://USER[:PASSWORD]@HOST:PORT/DB[?sslmode=...]`, TLS as
    /// libpq's `sslmode` and `sslrootcert` ask: see [`trackshift_net::pgconn`]) and
    /// creates the schema if needed.
    pub async fn connect(url: &str, max_connections: usize) -> Result<Self, StoreError> {
        let pool = trackshift_net::pgconn::pool(url, max_connections)
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let me = Self { pool };
        let client = me.client().await?;
        // Several gateways may start at once: one creates the schema at a time.
        client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock(7395001); {SCHEMA_COMMON}
                 CREATE TABLE IF NOT EXISTS transitions (
                    seq BIGSERIAL PRIMARY KEY,
                    job_id TEXT NOT NULL,
                    at_ms BIGINT NOT NULL,
                    from_state TEXT,
                    to_state TEXT NOT NULL,
                    reason TEXT NOT NULL);
                 CREATE INDEX IF NOT EXISTS transitions_job ON transitions (job_id, seq);
                 CREATE TABLE IF NOT EXISTS job_count_deltas (
                    seq BIGSERIAL PRIMARY KEY,
                    tenant TEXT NOT NULL,
                    state TEXT NOT NULL,
                    d BIGINT NOT NULL);
                 COMMIT;"
            ))
            .await
            .map_err(pg_err)?;
        Ok(me)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Backend(format!("PostgreSQL: {e}")))
    }
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(format!("PostgreSQL: {e}"))
}

struct PgTx {
    client: Option<deadpool_postgres::Object>,
}

fn pg_params(params: &[Val]) -> Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> {
    params
        .iter()
        .map(|p| -> Box<dyn tokio_postgres::types::ToSql + Sync + Send> {
            match p {
                Val::I(v) => Box::new(*v),
                Val::T(v) => Box::new(v.clone()),
                Val::NullI => Box::new(None::<i64>),
                Val::NullT => Box::new(None::<String>),
            }
        })
        .collect()
}

#[async_trait::async_trait]
impl Tx for PgTx {
    async fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError> {
        use tokio_postgres::types::Type;
        let client = self.client.as_ref().expect("open transaction");
        let boxed = pg_params(params);
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = boxed
            .iter()
            .map(|b| b.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let stmt = client.prepare_cached(sql).await.map_err(pg_err)?;
        let rows = client.query(&stmt, &refs).await.map_err(pg_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut v = Vec::with_capacity(r.len());
            for (i, col) in r.columns().iter().enumerate() {
                let t = col.type_();
                v.push(if *t == Type::INT8 {
                    r.try_get::<_, Option<i64>>(i)
                        .map_err(pg_err)?
                        .map_or(Val::NullI, Val::I)
                } else if *t == Type::INT4 {
                    r.try_get::<_, Option<i32>>(i)
                        .map_err(pg_err)?
                        .map_or(Val::NullI, |x| Val::I(i64::from(x)))
                } else {
                    r.try_get::<_, Option<String>>(i)
                        .map_err(pg_err)?
                        .map_or(Val::NullT, Val::T)
                });
            }
            out.push(Row(v));
        }
        Ok(out)
    }

    async fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        let client = self.client.as_ref().expect("open transaction");
        let boxed = pg_params(params);
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = boxed
            .iter()
            .map(|b| b.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let stmt = client.prepare_cached(sql).await.map_err(pg_err)?;
        client.execute(&stmt, &refs).await.map_err(pg_err)
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        let client = self.client.take().expect("open transaction");
        client.batch_execute("COMMIT").await.map_err(pg_err)
    }
}

impl Drop for PgTx {
    fn drop(&mut self) {
        // Not committed: drop the connection instead of returning it to the pool; the
        // server rolls the transaction back when the connection closes.
        if let Some(client) = self.client.take() {
            let _ = deadpool_postgres::Object::take(client);
        }
    }
}

#[async_trait::async_trait]
impl Backend for Postgres {
    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError> {
        let client = self.client().await?;
        client.batch_execute("BEGIN").await.map_err(pg_err)?;
        Ok(Box::new(PgTx {
            client: Some(client),
        }))
    }

    fn skip_locked(&self) -> &'static str {
        " FOR UPDATE SKIP LOCKED"
    }

    fn name(&self) -> &'static str {
        "postgresql"
    }
}
