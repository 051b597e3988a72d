//! `swarm push`: send broadcast, user or room messages from the command line, with a count
//! and a rate, and print every answer (id, seq, recipients, and with `--wait-ack` the
//! delivered and acked counts of the receipt). The sender of seed 004, for volley's API.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use crate::http::Client;
use crate::net;

/// Most messages one `swarm push` sends.
const COUNT_MAX: u64 = 1_000_000;

#[derive(Args, Debug, Clone)]
pub struct PushArgs {
    /// volley's HTTP address (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// Publisher key (sent as X-API-Key); defaults to $VOLLEY_API_KEY when set.
    #[arg(long, env = "VOLLEY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Send to every connected client.
    #[arg(long, conflicts_with_all = ["user", "room"])]
    pub broadcast: bool,
    /// Send to every connection of this user.
    #[arg(long, conflicts_with = "room")]
    pub user: Option<String>,
    /// Send to every member of this room.
    #[arg(long)]
    pub room: Option<String>,
    /// How many messages (`{n}` in the message is replaced by 1, 2, 3...).
    #[arg(long, default_value_t = 1)]
    pub count: u64,
    /// Messages per second (0: as fast as the answers come).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// User messages only: wait until the user's connections ack each message.
    #[arg(long)]
    pub wait_ack: bool,
    /// With --wait-ack: how long to wait, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// `local` delivers to the receiving process only (cluster mode, e.g. with Redis down).
    #[arg(long)]
    pub scope: Option<String>,
    /// Only print the final summary.
    #[arg(long)]
    pub quiet: bool,
    /// The message body (JSON clients get JSON as `data`, other text as a string).
    pub message: String,
}

/// The request path for the chosen target and options.
pub fn path_for(args: &PushArgs) -> Result<String, String> {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let mut path = match (&args.user, &args.room, args.broadcast) {
        (Some(user), None, false) => format!("/api/users/{}/messages", encode(user)),
        (None, Some(room), false) => format!("/api/rooms/{}/messages", encode(room)),
        (None, None, true) => "/api/broadcast".to_string(),
        _ => return Err("say where: --broadcast, --user ID or --room NAME".into()),
    };
    let mut query = Vec::new();
    if args.wait_ack {
        if args.user.is_none() {
            return Err("--wait-ack works with --user only".into());
        }
        query.push(format!("wait=ack&timeout_ms={}", args.timeout_ms));
    }
    if let Some(scope) = &args.scope {
        query.push(format!("scope={}", encode(scope)));
    }
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    Ok(path)
}

pub fn run(args: PushArgs) -> Result<Value, String> {
    let target = net::parse_target(&args.api, "http", "")?;
    if args.count == 0 || args.count > COUNT_MAX {
        return Err(format!("--count {}: must be 1..={COUNT_MAX}", args.count));
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        return Err(format!("--rate {}: must be 0 or more", args.rate));
    }
    let path = path_for(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    runtime.block_on(async move {
        let mut client = Client::new(target);
        if let Some(key) = &args.api_key {
            client = client.with_header("X-API-Key", key);
        }
        let gap = if args.rate > 0.0 {
            Duration::from_secs_f64(1.0 / args.rate)
        } else {
            Duration::ZERO
        };
        let started = Instant::now();
        let (mut ok, mut failed, mut recipients, mut acked) = (0u64, 0u64, 0u64, 0u64);
        for n in 1..=args.count {
            let due = started + gap.mul_f64((n - 1) as f64);
            tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
            let body = args.message.replace("{n}", &n.to_string());
            match client
                .post(&path, "application/json", body.as_bytes())
                .await
            {
                Ok(response) => {
                    let answer: Value = serde_json::from_slice(&response.body)
                        .unwrap_or_else(|_| json!(String::from_utf8_lossy(&response.body)));
                    if response.status == 200 {
                        ok += 1;
                        recipients += answer["recipients"].as_u64().unwrap_or(0);
                        acked += answer["acked"].as_u64().unwrap_or(0);
                    } else {
                        failed += 1;
                    }
                    if !args.quiet {
                        eprintln!("swarm push: #{n} {} {answer}", response.status);
                    }
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("swarm push: #{n} failed: {e}");
                }
            }
        }
        let mut summary = json!({
            "tool": "swarm push",
            "path": path,
            "sent": args.count,
            "ok": ok,
            "failed": failed,
            "recipients_total": recipients,
            "elapsed_s": started.elapsed().as_secs_f64(),
        });
        if args.wait_ack {
            summary["acked_total"] = acked.into();
        }
        Ok(summary)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> PushArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            push: PushArgs,
        }
        let mut argv = vec!["push"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).push
    }

    #[test]
    fn paths_for_each_target() {
        assert_eq!(
            path_for(&args(&["--broadcast", "hi"])).unwrap(),
            "/api/broadcast"
        );
        assert_eq!(
            path_for(&args(&["--user", "ann", "hi"])).unwrap(),
            "/api/users/ann/messages"
        );
        assert_eq!(
            path_for(&args(&["--room", "game:1", "hi"])).unwrap(),
            "/api/rooms/game%3A1/messages"
        );
        assert_eq!(
            path_for(&args(&[
                "--user",
                "a b",
                "--wait-ack",
                "--timeout-ms",
                "300",
                "hi"
            ]))
            .unwrap(),
            "/api/users/a%20b/messages?wait=ack&timeout_ms=300"
        );
        assert_eq!(
            path_for(&args(&["--broadcast", "--scope", "local", "hi"])).unwrap(),
            "/api/broadcast?scope=local"
        );
        assert!(path_for(&args(&["hi"])).is_err());
        assert!(path_for(&args(&["--room", "r", "--wait-ack", "hi"])).is_err());
    }
}
