//! Sequence checking, sans-IO: what one connection saw (`SeqTrack`), what every
//! connection of a worker saw per seq (`SeqTable`), and how a probe message is read
//! (`parse_probe`). Time is passed in; nothing here reads a clock or a socket.

use serde::Deserialize;

/// Seqs below this get their own row in the report (receivers, time until the last one).
/// 512 rows x 24 bytes per worker: small, and more than any bench publishes.
pub const SEQS_TRACKED: usize = 512;

/// The fields swarm needs from a message published by `swarm publish`. Other fields
/// (`pad`, or whatever an envelope adds) are ignored.
#[derive(Deserialize)]
struct Probe {
    seq: u64,
    t_us: u64,
}

/// A probe wrapped in an envelope under `data` (volley's native protocol).
#[derive(Deserialize)]
struct InData {
    data: Probe,
}

/// `Some((seq, t_us))` if `payload` is a JSON object with u64 fields `seq` and `t_us`.
///
/// The server may wrap the published body in an envelope; if the top-level object has no
/// `seq`, a nested object under `data`, `body`, `payload` or `msg` is tried too.
pub fn parse_probe(payload: &[u8]) -> Option<(u64, u64)> {
    if let Ok(p) = serde_json::from_slice::<Probe>(payload) {
        return Some((p.seq, p.t_us));
    }
    // volley's native envelope {"type":"message",...,"data":{probe}}: one typed pass.
    if let Ok(w) = serde_json::from_slice::<InData>(payload) {
        return Some((w.data.seq, w.data.t_us));
    }
    // Rare path: only messages that are not a bare probe pay for a full parse.
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    for key in ["data", "body", "payload", "msg"] {
        let Some(found) = value.get(key) else {
            continue;
        };
        let inner = match found {
            serde_json::Value::String(s) => serde_json::from_str::<serde_json::Value>(s).ok(),
            other => Some(other.clone()),
        };
        if let Some(inner) = inner {
            if let (Some(seq), Some(t_us)) = (
                inner.get("seq").and_then(|v| v.as_u64()),
                inner.get("t_us").and_then(|v| v.as_u64()),
            ) {
                return Some((seq, t_us));
            }
        }
    }
    None
}

/// What `SeqTrack::observe` concluded about one seq.
#[derive(Debug, PartialEq, Eq)]
pub enum SeqEvent {
    /// The first seq this connection saw.
    First,
    /// Exactly last + 1.
    InOrder,
    /// Skipped this many seqs (last + 1 .. seq were never seen).
    Gap(u64),
    /// seq <= last: a duplicate or out-of-order delivery.
    Duplicate,
}

/// Per-connection counters: 40 bytes, however long the run.
#[derive(Debug, Default, Clone)]
pub struct SeqTrack {
    last_seq: Option<u64>,
    pub received: u64,
    /// Seqs skipped between two received ones (a gap of 3 counts 3).
    pub gaps: u64,
    /// Seqs received that were <= the last one seen.
    pub duplicates: u64,
}

impl SeqTrack {
    pub fn observe(&mut self, seq: u64) -> SeqEvent {
        self.received += 1;
        let event = match self.last_seq {
            None => SeqEvent::First,
            Some(last) if last.checked_add(1) == Some(seq) => SeqEvent::InOrder,
            Some(last) if seq > last => SeqEvent::Gap(seq - last - 1),
            Some(_) => SeqEvent::Duplicate,
        };
        match event {
            SeqEvent::Gap(n) => self.gaps += n,
            SeqEvent::Duplicate => self.duplicates += 1,
            SeqEvent::First | SeqEvent::InOrder => {}
        }
        if self.last_seq.is_none_or(|last| seq > last) {
            self.last_seq = Some(seq);
        }
        event
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SeqRow {
    /// How many receipts of this seq (a duplicate counts again).
    pub receivers: u64,
    /// Latest arrival, as µs after the message's t_us: when the last client had it.
    pub last_receive_us: u64,
    /// Earliest arrival, as µs after t_us.
    pub first_receive_us: u64,
    /// Sum of every receipt's latency (for the mean per broadcast).
    pub latency_sum_us: u64,
}

/// Per-seq rows for seqs below `SEQS_TRACKED`; larger seqs are only counted.
#[derive(Debug, Clone)]
pub struct SeqTable {
    rows: Vec<SeqRow>,
    pub untracked: u64,
}

impl Default for SeqTable {
    fn default() -> Self {
        Self {
            rows: vec![SeqRow::default(); SEQS_TRACKED],
            untracked: 0,
        }
    }
}

impl SeqTable {
    pub fn record(&mut self, seq: u64, latency_us: u64) {
        let Some(row) = usize::try_from(seq).ok().and_then(|i| self.rows.get_mut(i)) else {
            self.untracked += 1;
            return;
        };
        if row.receivers == 0 {
            row.first_receive_us = latency_us;
            row.last_receive_us = latency_us;
        } else {
            row.first_receive_us = row.first_receive_us.min(latency_us);
            row.last_receive_us = row.last_receive_us.max(latency_us);
        }
        row.receivers += 1;
        row.latency_sum_us = row.latency_sum_us.saturating_add(latency_us);
    }

    pub fn merge(&mut self, other: &SeqTable) {
        for (mine, theirs) in self.rows.iter_mut().zip(other.rows.iter()) {
            if theirs.receivers == 0 {
                continue;
            }
            if mine.receivers == 0 {
                *mine = *theirs;
            } else {
                mine.receivers += theirs.receivers;
                mine.first_receive_us = mine.first_receive_us.min(theirs.first_receive_us);
                mine.last_receive_us = mine.last_receive_us.max(theirs.last_receive_us);
                mine.latency_sum_us = mine.latency_sum_us.saturating_add(theirs.latency_sum_us);
            }
        }
        self.untracked += other.untracked;
    }

    /// (seq, row) for every seq that somebody received, in seq order.
    pub fn seen(&self) -> impl Iterator<Item = (u64, SeqRow)> + '_ {
        self.rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.receivers > 0)
            .map(|(i, r)| (i as u64, *r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_is_parsed_with_extra_fields() {
        let body = br#"{"seq":7,"t_us":1700000000000000,"pad":"xxxx"}"#;
        assert_eq!(parse_probe(body), Some((7, 1_700_000_000_000_000)));
    }

    #[test]
    fn probe_inside_an_envelope_is_found() {
        let nested = br#"{"type":"msg","data":{"seq":3,"t_us":10}}"#;
        assert_eq!(parse_probe(nested), Some((3, 10)));
        let as_string = br#"{"body":"{\"seq\":4,\"t_us\":11}"}"#;
        assert_eq!(parse_probe(as_string), Some((4, 11)));
    }

    #[test]
    fn non_probes_are_rejected() {
        assert_eq!(parse_probe(b"hello"), None);
        assert_eq!(parse_probe(br#"{"seq":-1,"t_us":5}"#), None);
        assert_eq!(parse_probe(br#"{"seq":1}"#), None);
        assert_eq!(parse_probe(b""), None);
        assert_eq!(parse_probe(br#"{"data":5}"#), None);
    }

    #[test]
    fn track_counts_gaps_and_duplicates() {
        let mut t = SeqTrack::default();
        assert_eq!(t.observe(5), SeqEvent::First);
        assert_eq!(t.observe(6), SeqEvent::InOrder);
        assert_eq!(t.observe(9), SeqEvent::Gap(2));
        assert_eq!(t.observe(9), SeqEvent::Duplicate);
        assert_eq!(t.observe(7), SeqEvent::Duplicate);
        // An out-of-order seq does not move `last` back: 10 is in order after 9.
        assert_eq!(t.observe(10), SeqEvent::InOrder);
        assert_eq!((t.received, t.gaps, t.duplicates), (6, 2, 2));
    }

    #[test]
    fn track_survives_u64_max() {
        let mut t = SeqTrack::default();
        t.observe(u64::MAX);
        assert_eq!(t.observe(u64::MAX), SeqEvent::Duplicate);
    }

    #[test]
    fn table_records_and_merges() {
        let mut a = SeqTable::default();
        let mut b = SeqTable::default();
        a.record(1, 100);
        a.record(1, 300);
        b.record(1, 50);
        b.record(2, 70);
        b.record(SEQS_TRACKED as u64, 1);
        a.merge(&b);
        let rows: Vec<_> = a.seen().collect();
        assert_eq!(
            rows,
            vec![
                (
                    1,
                    SeqRow {
                        receivers: 3,
                        last_receive_us: 300,
                        first_receive_us: 50,
                        latency_sum_us: 450,
                    }
                ),
                (
                    2,
                    SeqRow {
                        receivers: 1,
                        last_receive_us: 70,
                        first_receive_us: 70,
                        latency_sum_us: 70,
                    }
                ),
            ]
        );
        assert_eq!(a.untracked, 1);
    }
}
