//! What a `swarm hold` worker counts, how workers' counts merge, and the JSON report built
//! from the merged counts. Pure: no I/O, no clock (times are passed in).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::hist::Histogram;
use crate::seq::{SeqTable, SeqTrack};

/// Distinct reasons kept per map; more are folded into "other", so a storm of odd errors
/// cannot grow memory.
pub const REASONS_MAX: usize = 32;

/// Counts by reason ("tcp: Connection refused", "close 1001", ...), at most `REASONS_MAX` keys.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reasons(BTreeMap<String, u64>);

impl Reasons {
    pub fn add(&mut self, reason: &str) {
        self.add_n(reason, 1);
    }

    fn add_n(&mut self, reason: &str, n: u64) {
        if let Some(count) = self.0.get_mut(reason) {
            *count += n;
        } else if self.0.len() < REASONS_MAX - 1 {
            self.0.insert(reason.to_owned(), n);
        } else {
            *self.0.entry("other".to_owned()).or_default() += n;
        }
    }

    pub fn merge(&mut self, other: &Reasons) {
        for (reason, &n) in &other.0 {
            self.add_n(reason, n);
        }
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn to_json(&self) -> Value {
        json!(self.0)
    }
}

/// Everything one worker counted. Bounded: the per-connection part is folded in by
/// `finish_conn` when a connection ends.
#[derive(Debug, Default, Clone)]
pub struct WorkerStats {
    pub attempted: u64,
    pub connected: u64,
    pub failed: u64,
    pub connect_failures: Reasons,
    /// Connections that ended before swarm asked them to (server close, reset, error).
    pub disconnects: Reasons,
    /// Connections swarm closed itself at the end of the run (or on SIGINT).
    pub closed_by_us: u64,
    pub messages: u64,
    pub probes: u64,
    pub unparsed: u64,
    pub bytes: u64,
    pub pings: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub received_per_conn_min: Option<u64>,
    pub received_per_conn_max: u64,
    pub latency_us: Histogram,
    pub seqs: SeqTable,
    /// When this worker's last connection attempt resolved, since the run's start.
    pub connects_done_after: Option<Duration>,
}

impl WorkerStats {
    /// Folds one finished connection's counters in.
    pub fn finish_conn(&mut self, track: &SeqTrack) {
        self.gaps += track.gaps;
        self.duplicates += track.duplicates;
        self.received_per_conn_min = Some(
            self.received_per_conn_min
                .map_or(track.received, |m| m.min(track.received)),
        );
        self.received_per_conn_max = self.received_per_conn_max.max(track.received);
    }

    pub fn merge(&mut self, o: &WorkerStats) {
        self.attempted += o.attempted;
        self.connected += o.connected;
        self.failed += o.failed;
        self.connect_failures.merge(&o.connect_failures);
        self.disconnects.merge(&o.disconnects);
        self.closed_by_us += o.closed_by_us;
        self.messages += o.messages;
        self.probes += o.probes;
        self.unparsed += o.unparsed;
        self.bytes += o.bytes;
        self.pings += o.pings;
        self.gaps += o.gaps;
        self.duplicates += o.duplicates;
        self.received_per_conn_min = match (self.received_per_conn_min, o.received_per_conn_min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.received_per_conn_max = self.received_per_conn_max.max(o.received_per_conn_max);
        self.latency_us.merge(&o.latency_us);
        self.seqs.merge(&o.seqs);
        self.connects_done_after = self.connects_done_after.max(o.connects_done_after);
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Run facts that are not counters.
pub struct RunFacts<'a> {
    pub url: &'a str,
    pub conns_requested: u64,
    pub sources: usize,
    pub workers: usize,
    pub elapsed: Duration,
    pub stopped_by_signal: bool,
}

/// The one JSON report `swarm hold` prints on stdout.
pub fn hold_report(facts: &RunFacts, s: &WorkerStats) -> Value {
    let connect_time_s = s.connects_done_after.map(|d| d.as_secs_f64());
    let accept_rate = connect_time_s
        .filter(|&t| t > 0.0)
        .map(|t| round3(s.connected as f64 / t));
    let h = &s.latency_us;
    let seqs: Vec<Value> = s
        .seqs
        .seen()
        .map(|(seq, r)| {
            json!({
                "seq": seq,
                "receivers": r.receivers,
                "first_receive_us": r.first_receive_us,
                "last_receive_us": r.last_receive_us,
                "latency_sum_us": r.latency_sum_us,
            })
        })
        .collect();
    json!({
        "tool": "swarm hold",
        "url": facts.url,
        "sources": facts.sources,
        "workers": facts.workers,
        "conns_requested": facts.conns_requested,
        "conns_attempted": s.attempted,
        "conns_connected": s.connected,
        "conns_failed": s.failed,
        "connect_failures": s.connect_failures.to_json(),
        "connect_time_s": connect_time_s.map(round3),
        "accept_rate_per_s": accept_rate,
        "elapsed_s": round3(facts.elapsed.as_secs_f64()),
        "stopped_by_signal": facts.stopped_by_signal,
        "messages_received": s.messages,
        "probes_received": s.probes,
        "messages_unparsed": s.unparsed,
        "bytes_received": s.bytes,
        "pings_received": s.pings,
        "gaps": s.gaps,
        "duplicates": s.duplicates,
        "received_per_conn": {"min": s.received_per_conn_min, "max": s.received_per_conn_max},
        "disconnects": s.disconnects.total(),
        "disconnect_reasons": s.disconnects.to_json(),
        "closed_by_us": s.closed_by_us,
        "latency_us": {
            "count": h.count(),
            "min": h.min(),
            "p50": h.quantile(0.50),
            "p90": h.quantile(0.90),
            "p99": h.quantile(0.99),
            "p999": h.quantile(0.999),
            "max": h.max(),
            "mean": h.mean().map(|m| m.round()),
        },
        "latency_hist": h.to_sparse(),
        "seqs": seqs,
        "seq_receipts_untracked": s.seqs.untracked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_capped() {
        let mut r = Reasons::default();
        for i in 0..100 {
            r.add(&format!("reason {i}"));
        }
        r.add("reason 0");
        assert_eq!(r.0.len(), REASONS_MAX);
        assert_eq!(r.total(), 101);
        assert_eq!(r.0["reason 0"], 2);
        assert_eq!(r.0["other"], 100 - (REASONS_MAX as u64 - 1));
    }

    #[test]
    fn finish_conn_tracks_min_and_max() {
        let mut s = WorkerStats::default();
        let mut a = SeqTrack::default();
        for seq in [1, 2, 4] {
            a.observe(seq);
        }
        let b = SeqTrack::default();
        s.finish_conn(&a);
        s.finish_conn(&b);
        assert_eq!(s.received_per_conn_min, Some(0));
        assert_eq!(s.received_per_conn_max, 3);
        assert_eq!(s.gaps, 1);
    }

    #[test]
    fn merge_and_report() {
        let mut a = WorkerStats::default();
        let mut b = WorkerStats::default();
        a.attempted = 3;
        a.connected = 2;
        a.failed = 1;
        a.connect_failures.add("tcp: Connection refused");
        a.messages = 4;
        a.latency_us.record(100);
        a.latency_us.record(200);
        a.seqs.record(1, 100);
        a.seqs.record(1, 200);
        a.connects_done_after = Some(Duration::from_millis(500));
        a.received_per_conn_min = Some(2);
        b.attempted = 2;
        b.connected = 2;
        b.disconnects.add("close 1001");
        b.messages = 2;
        b.latency_us.record(50);
        b.seqs.record(1, 50);
        b.connects_done_after = Some(Duration::from_millis(1000));
        b.received_per_conn_min = Some(1);
        a.merge(&b);
        let facts = RunFacts {
            url: "ws://127.0.0.1:1/ws",
            conns_requested: 5,
            sources: 1,
            workers: 2,
            elapsed: Duration::from_secs(3),
            stopped_by_signal: false,
        };
        let r = hold_report(&facts, &a);
        assert_eq!(r["conns_connected"], 4);
        assert_eq!(r["conns_failed"], 1);
        assert_eq!(r["connect_failures"]["tcp: Connection refused"], 1);
        assert_eq!(r["connect_time_s"], 1.0);
        assert_eq!(r["accept_rate_per_s"], 4.0);
        assert_eq!(r["messages_received"], 6);
        assert_eq!(r["disconnects"], 1);
        assert_eq!(r["received_per_conn"]["min"], 1);
        assert_eq!(r["latency_us"]["p50"], 100);
        assert_eq!(r["latency_us"]["max"], 200);
        assert_eq!(r["seqs"][0]["seq"], 1);
        assert_eq!(r["seqs"][0]["receivers"], 3);
        assert_eq!(r["seqs"][0]["last_receive_us"], 200);
        assert_eq!(r["seqs"][0]["first_receive_us"], 50);
    }

    #[test]
    fn empty_report_has_nulls_not_panics() {
        let facts = RunFacts {
            url: "ws://127.0.0.1:1/ws",
            conns_requested: 0,
            sources: 1,
            workers: 1,
            elapsed: Duration::ZERO,
            stopped_by_signal: true,
        };
        let r = hold_report(&facts, &WorkerStats::default());
        assert!(r["latency_us"]["p50"].is_null());
        assert!(r["connect_time_s"].is_null());
        assert_eq!(r["seqs"].as_array().map(Vec::len), Some(0));
    }
}
