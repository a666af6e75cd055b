//! `trackshift jobs ...`: the job API from the command line.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

/// Where the API is and who is asking.
#[derive(Args, Clone)]
pub struct ApiArgs {
    /// Base URL of the gateway's HTTP endpoint.
    #[arg(
        long,
        env = "TRACKSHIFT_API",
        default_value = "http://127.0.0.1:8480",
        global = true
    )]
    api: String,
    /// API key (better: the TRACKSHIFT_API_KEY environment variable or --key-file).
    #[arg(
        long,
        env = "TRACKSHIFT_API_KEY",
        hide_env_values = true,
        global = true
    )]
    key: Option<String>,
    /// File holding the API key.
    #[arg(long, global = true)]
    key_file: Option<PathBuf>,
}

/// `trackshift jobs` subcommands.
#[derive(Subcommand)]
pub enum JobsCommand {
    /// Submit a job: SOURCE is a path on the gateway's machine under one of the tenant's
    /// source directories. Prints the job id.
    Submit {
        /// Absolute path of the file or directory to send.
        source: PathBuf,
        /// Destination URI (repeat to fan out).
        #[arg(long = "dest", required = true)]
        destinations: Vec<String>,
        /// Chunk size (power of two).
        #[arg(long, value_parser = crate::size::parse_size)]
        chunk_size: Option<u64>,
        /// Priority 0 (lowest) to 9.
        #[arg(long)]
        priority: Option<u8>,
        /// Data classification (for example phi).
        #[arg(long)]
        classification: Option<String>,
        /// Fail-closed delivery for this job.
        #[arg(long)]
        strict: bool,
        /// Attempts before the job is dead-lettered.
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Wait for the job to end (exit 1 unless it completed).
        #[arg(long)]
        wait: bool,
        /// Print the job as the API returned it (one JSON object) instead of its id.
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first.
    List {
        /// Only jobs in this state.
        #[arg(long)]
        state: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Cursor from a previous listing.
        #[arg(long)]
        cursor: Option<String>,
        /// Print the page as the API returned it (one JSON object: `jobs` and `next`).
        #[arg(long)]
        json: bool,
    },
    /// Show a job with its state transitions (JSON).
    Status {
        /// Job id.
        id: String,
    },
    /// Cancel a queued or running job.
    Cancel {
        /// Job id.
        id: String,
    },
    /// Queue a failed or cancelled job again.
    Retry {
        /// Job id.
        id: String,
    },
    /// Wait until a job ends; exit 0 if it completed, 1 otherwise. Writes the signed
    /// manifest and receipts with --out.
    Wait {
        /// Job id.
        id: String,
        /// Give up after this many seconds (exit 2).
        #[arg(long)]
        timeout: Option<u64>,
        /// Directory for manifest.json and receipt*.json once completed.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

struct Client {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Client {
    fn new(a: &ApiArgs) -> Result<Self> {
        let key = match (&a.key, &a.key_file) {
            (Some(k), None) => k.clone(),
            (None, Some(f)) => crate::read_secret_text(f)?,
            (Some(_), Some(_)) => bail!("give either --key (TRACKSHIFT_API_KEY) or --key-file"),
            (None, None) => bail!("no API key: set TRACKSHIFT_API_KEY or pass --key-file"),
        };
        Ok(Self {
            base: a.api.trim_end_matches('/').to_string(),
            key,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.key);
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.to_string());
        }
        // A script running inside a trace passes it on (the OpenTelemetry convention for
        // processes: the TRACEPARENT environment variable); the gateway checks it.
        if let Ok(t) = std::env::var("TRACEPARENT") {
            let t = trackshift_engine::trace::TraceParent::parse(&t)
                .context("the TRACEPARENT environment variable")?;
            req = req.header("traceparent", t.to_string());
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("requesting {url}"))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .with_context(|| format!("reading {url}"))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let reason = value["error"]
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string);
            bail!("{status}: {reason}");
        }
        Ok(value)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }
}

/// Runs a `jobs` subcommand; returns the process exit code.
pub async fn run(api: ApiArgs, cmd: JobsCommand) -> Result<u8> {
    let c = Client::new(&api)?;
    match cmd {
        JobsCommand::Submit {
            source,
            destinations,
            chunk_size,
            priority,
            classification,
            strict,
            max_attempts,
            wait,
            json,
        } => {
            // Absolute and written plainly (no `.`, doubled or trailing slashes); `..` is
            // left for the server to refuse, as the path is on its machine.
            let source: std::path::PathBuf = std::path::absolute(&source)?.components().collect();
            let mut body = serde_json::json!({ "source": source, "destinations": destinations });
            let o = body.as_object_mut().expect("object");
            if let Some(v) = chunk_size {
                o.insert("chunk_size".into(), v.into());
            }
            if let Some(v) = priority {
                o.insert("priority".into(), v.into());
            }
            if let Some(v) = classification {
                o.insert("classification".into(), v.into());
            }
            if strict {
                o.insert("strict".into(), true.into());
            }
            if let Some(v) = max_attempts {
                o.insert("max_attempts".into(), v.into());
            }
            let job = c
                .call(reqwest::Method::POST, "/v1/jobs", Some(body))
                .await?;
            let id = job["id"]
                .as_str()
                .context("the API returned no job id")?
                .to_string();
            if json {
                crate::print_text(&format!("{job}\n"))?;
            } else {
                println!("{id}");
            }
            if wait {
                return wait_for(&c, &id, None, None).await;
            }
            Ok(0)
        }
        JobsCommand::List {
            state,
            limit,
            cursor,
            json,
        } => {
            let mut path = format!("/v1/jobs?limit={limit}");
            if let Some(s) = state {
                path.push_str(&format!("&state={}", urlencode(&s)));
            }
            if let Some(cur) = cursor {
                path.push_str(&format!("&cursor={}", urlencode(&cur)));
            }
            let page = c.get(&path).await?;
            if json {
                crate::print_text(&format!("{page}\n"))?;
                return Ok(0);
            }
            for j in page["jobs"].as_array().into_iter().flatten() {
                println!(
                    "{}  {:<9}  {:>3}%  {}  {}",
                    j["id"].as_str().unwrap_or("?"),
                    j["state"].as_str().unwrap_or("?"),
                    percent(j),
                    j["created_at"].as_str().unwrap_or(""),
                    j["source"].as_str().unwrap_or("")
                );
            }
            if let Some(next) = page["next"].as_str() {
                println!("more: --cursor {next}");
            }
            Ok(0)
        }
        JobsCommand::Status { id } => {
            let job = c.get(&format!("/v1/jobs/{}", urlencode(&id))).await?;
            println!("{}", serde_json::to_string_pretty(&job)?);
            Ok(0)
        }
        JobsCommand::Cancel { id } => act(&c, &id, "cancel").await,
        JobsCommand::Retry { id } => act(&c, &id, "retry").await,
        JobsCommand::Wait { id, timeout, out } => {
            wait_for(&c, &id, timeout.map(Duration::from_secs), out).await
        }
    }
}

/// `POST /v1/jobs/ID/ACTION` (cancel, retry); prints the job's id and new state.
async fn act(c: &Client, id: &str, action: &str) -> Result<u8> {
    let job = c
        .call(
            reqwest::Method::POST,
            &format!("/v1/jobs/{}/{action}", urlencode(id)),
            None,
        )
        .await?;
    println!(
        "{} {}",
        job["id"].as_str().unwrap_or("?"),
        job["state"].as_str().unwrap_or("?")
    );
    Ok(0)
}

fn percent(j: &Value) -> u64 {
    let total = j["bytes_total"].as_u64().unwrap_or(0);
    let done = j["bytes_done"].as_u64().unwrap_or(0);
    done.saturating_mul(100)
        .checked_div(total)
        .unwrap_or(if j["state"] == "completed" { 100 } else { 0 })
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn wait_for(
    c: &Client,
    id: &str,
    timeout: Option<Duration>,
    out: Option<PathBuf>,
) -> Result<u8> {
    let started = Instant::now();
    let path = format!("/v1/jobs/{}", urlencode(id));
    let mut last = String::new();
    loop {
        let job = c.get(&path).await?;
        let state = job["state"].as_str().unwrap_or("?").to_string();
        let line = format!("{state} {}%", percent(&job));
        if line != last {
            eprintln!("{id}: {line}");
            last = line;
        }
        match state.as_str() {
            "completed" => {
                if let Some(dir) = out {
                    let manifest = c.get(&format!("{path}/manifest")).await?;
                    let receipts = c.get(&format!("{path}/receipts")).await?;
                    std::fs::create_dir_all(&dir)?;
                    crate::write_doc(&dir.join("manifest.json"), &manifest.to_string())?;
                    for (i, r) in receipts["receipts"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .enumerate()
                    {
                        let name = if i == 0 {
                            "receipt.json".to_string()
                        } else {
                            format!("receipt-{}.json", i + 1)
                        };
                        crate::write_doc(&dir.join(name), &r.to_string())?;
                    }
                    eprintln!("manifest and receipts in {}", dir.display());
                }
                return Ok(0);
            }
            "failed" | "cancelled" => {
                if let Some(e) = job["last_error"].as_str() {
                    eprintln!("{id}: {e}");
                }
                return Ok(1);
            }
            _ => {}
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            eprintln!("{id}: still {state} after the timeout");
            return Ok(2);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
