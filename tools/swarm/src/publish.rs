//! `swarm publish`: POSTs numbered, timestamped broadcasts to `/api/broadcast` at a fixed
//! interval, prints each answer on stderr and a JSON summary on stdout. Bounded by
//! `--count` and a per-request timeout.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::hist::Histogram;
use crate::http::Client;
use crate::net::{self, Target};
use crate::stats::Reasons;

pub struct PublishConfig {
    pub api: String,
    pub target: Target,
    pub path: String,
    pub count: u64,
    pub interval: Duration,
    pub size_bytes: usize,
    pub first_seq: u64,
    pub timeout: Duration,
    pub quiet: bool,
}

/// `{"seq":n,"t_us":t,"pad":"xxx"}`, padded so the whole body is about `size_bytes`
/// (never shorter than the body without pad).
pub fn make_body(seq: u64, t_us: u64, size_bytes: usize) -> String {
    let bare = format!("{{\"seq\":{seq},\"t_us\":{t_us},\"pad\":\"\"}}");
    let pad = size_bytes.saturating_sub(bare.len());
    format!(
        "{{\"seq\":{seq},\"t_us\":{t_us},\"pad\":\"{}\"}}",
        "x".repeat(pad)
    )
}

/// The `recipients` field of a broadcast answer, if there is one.
pub fn recipients_of(body: &[u8]) -> Option<u64> {
    field_of(body, "recipients")
}

/// The `nodes` field of a broadcast answer (cluster mode: Redis subscribers that got the
/// message, one per shard with clients, in any process), if there is one.
pub fn nodes_of(body: &[u8]) -> Option<u64> {
    field_of(body, "nodes")
}

fn field_of(body: &[u8], key: &str) -> Option<u64> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get(key)?
        .as_u64()
}

pub fn run(cfg: PublishConfig) -> Result<Value, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build a tokio runtime: {e}"))?;
    rt.block_on(publish(cfg))
}

async fn publish(cfg: PublishConfig) -> Result<Value, String> {
    let mut client = Client::new(cfg.target.clone());
    let start = Instant::now();
    let (mut ok, mut failed, mut total_recipients) = (0u64, 0u64, 0u64);
    let mut recipients_min: Option<u64> = None;
    let mut recipients_max = 0u64;
    let (mut nodes_min, mut nodes_max): (Option<u64>, Option<u64>) = (None, None);
    let mut failures = Reasons::default();
    let mut post_us = Histogram::default();
    for n in 0..cfg.count {
        let due = start
            + cfg
                .interval
                .saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
        tokio::time::sleep_until(due.into()).await;
        let seq = cfg.first_seq + n;
        let body = make_body(seq, net::now_unix_us(), cfg.size_bytes);
        let sent_at = Instant::now();
        let answer = tokio::time::timeout(
            cfg.timeout,
            client.post(&cfg.path, "application/json", body.as_bytes()),
        )
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", cfg.timeout.as_millis())));
        let took_us = sent_at.elapsed().as_micros() as u64;
        post_us.record(took_us);
        match answer {
            Ok(resp) if resp.status == 200 => {
                ok += 1;
                let recipients = recipients_of(&resp.body);
                if let Some(r) = recipients {
                    total_recipients += r;
                    recipients_min = Some(recipients_min.map_or(r, |m| m.min(r)));
                    recipients_max = recipients_max.max(r);
                }
                let nodes = nodes_of(&resp.body);
                if let Some(n) = nodes {
                    nodes_min = Some(nodes_min.map_or(n, |m| m.min(n)));
                    nodes_max = Some(nodes_max.map_or(n, |m| m.max(n)));
                }
                if !cfg.quiet {
                    let r = recipients.map_or("?".to_owned(), |r| r.to_string());
                    let n = nodes.map_or(String::new(), |n| format!(" nodes={n}"));
                    eprintln!(
                        "swarm publish: seq={seq} status=200 recipients={r}{n} post_us={took_us}"
                    );
                }
            }
            Ok(resp) => {
                failed += 1;
                let reason = format!("HTTP {}", resp.status);
                eprintln!(
                    "swarm publish: seq={seq} {reason}: {}",
                    String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
                );
                failures.add(&reason);
            }
            Err(e) => {
                failed += 1;
                eprintln!("swarm publish: seq={seq} failed: {e}");
                failures.add(&e);
            }
        }
    }
    Ok(json!({
        "tool": "swarm publish",
        "api": cfg.api,
        "path": cfg.path,
        "sent": cfg.count,
        "ok": ok,
        "failed": failed,
        "failures": failures.to_json(),
        "first_seq": cfg.first_seq,
        "last_seq": cfg.first_seq + cfg.count.saturating_sub(1),
        "body_bytes": make_body(cfg.first_seq, net::now_unix_us(), cfg.size_bytes).len(),
        "total_recipients": total_recipients,
        "recipients_min": recipients_min,
        "recipients_max": recipients_max,
        "nodes_min": nodes_min,
        "nodes_max": nodes_max,
        "post_us": {"p50": post_us.quantile(0.5), "p99": post_us.quantile(0.99), "max": post_us.max()},
        "elapsed_s": (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seq::parse_probe;

    #[test]
    fn body_is_padded_and_parses_back() {
        let b = make_body(42, 1_700_000_000_123_456, 100);
        assert_eq!(b.len(), 100);
        assert_eq!(parse_probe(b.as_bytes()), Some((42, 1_700_000_000_123_456)));
        let small = make_body(1, 2, 0);
        assert_eq!(small, r#"{"seq":1,"t_us":2,"pad":""}"#);
    }

    #[test]
    fn recipients_are_read() {
        assert_eq!(recipients_of(br#"{"recipients": 15000}"#), Some(15000));
        assert_eq!(recipients_of(br#"{"ok":true}"#), None);
        assert_eq!(recipients_of(b"nope"), None);
    }

    #[test]
    fn nodes_are_read_when_present() {
        let cluster = br#"{"recipients": 9000, "nodes": 2, "id": "ab-0-1"}"#;
        assert_eq!(recipients_of(cluster), Some(9000));
        assert_eq!(nodes_of(cluster), Some(2));
        assert_eq!(nodes_of(br#"{"recipients": 15000}"#), None);
    }
}
