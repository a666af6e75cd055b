//! A tenant's client of a test gateway's job API (`serve --http`).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Calls the job API at `base` as the tenant whose key is `key`.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, key: &str) -> Self {
        Self {
            base: base.to_string(),
            key: key.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// One request: (status, body).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    /// Submits a job of `source` to `dests`; returns its id.
    pub async fn submit(&self, source: &Path, dests: &[String]) -> String {
        let (s, body) = self
            .call(
                "POST",
                "/v1/jobs",
                Some(json!({ "source": source, "destinations": dests })),
            )
            .await;
        assert_eq!(s, 201, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["id"].as_str().unwrap().to_string()
    }

    /// The job's state.
    pub async fn state(&self, id: &str) -> String {
        let (s, body) = self.call("GET", &format!("/v1/jobs/{id}"), None).await;
        assert_eq!(s, 200, "{body}");
        let job: Value = serde_json::from_str(&body).unwrap();
        job["state"].as_str().unwrap().to_string()
    }

    /// Waits (at most 180 s) until the job has ended; returns its final state.
    pub async fn wait(&self, id: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let state = self.state(id).await;
            if matches!(state.as_str(), "completed" | "failed" | "cancelled") {
                return state;
            }
            assert!(Instant::now() < deadline, "job {id} never finished");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The job's receipts, each as its JSON text.
    pub async fn receipts(&self, id: &str) -> Vec<String> {
        let (s, r) = self
            .call("GET", &format!("/v1/jobs/{id}/receipts"), None)
            .await;
        assert_eq!(s, 200, "{r}");
        let v: Value = serde_json::from_str(&r).unwrap();
        v["receipts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.to_string())
            .collect()
    }
}
