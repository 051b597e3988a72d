//! Nothing lost: replaying a channel's history to a recovering connection (no gap, no
//! duplicate at the seam with live delivery, which `seam` holds back), then
//! handing an offline user's inbox to a new connection. Protocol-neutral: replayed
//! messages and the end-of-recovery marker are encoded by the connection's codec.
//!
//! Called by `protocol` (join with `since`, `recover`) and `shard` (resume at connect);
//! each recovery is one tracked task (`ctx.tasks`), with no borrow held across an await.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::Services;
use crate::conn::ConnKey;
use crate::envelope::Target;
use crate::hub::frames::stored_frame;
use crate::mesh::Replay;
use crate::metrics::Metrics;
use crate::protocol::{Recovered, Since};
use crate::seam::Recovering;
use crate::ws::frame::close_code;

/// How often a replay waiting for queue room looks again.
const REPLAY_POLL: Duration = Duration::from_millis(2);
/// How long a replay waits for a client that reads nothing before closing it.
const REPLAY_STALL: Duration = Duration::from_secs(10);
/// Seconds a recovered channel keeps dropping late duplicates of replayed messages.
const RECOVERY_GRACE_S: u32 = 5;

/// Who wanted a replay, which decides what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// The client (`join {since}`, `recover`, `?resume=`): a marker ends every channel.
    Client,
    /// A socket.io session's move between shards: a marker only for a channel not
    /// replayed whole (the client is told of a loss, and of nothing else).
    HandOver,
}

impl Services {
    /// Waits until a connection's outbound queue is at most half full. False when the
    /// connection is gone, or made no room for `REPLAY_STALL` (it is then closed as a slow
    /// consumer: it is not reading its replay).
    async fn wait_for_queue_room(&self, key: ConnKey) -> bool {
        let half = (self.ctx.config.outbound_frames_max / 2).max(1);
        let stalled_at = Instant::now();
        loop {
            match self.hub.queued_frames(key) {
                None => return false,
                Some(queued) if queued < half => return true,
                Some(_) if stalled_at.elapsed() >= REPLAY_STALL => {
                    Metrics::inc(&self.ctx.metrics.slow_consumer_closes_total);
                    self.hub.close(
                        key,
                        close_code::POLICY,
                        "slow consumer: not reading its replay",
                    );
                    return false;
                }
                Some(_) => glommio::timer::sleep(REPLAY_POLL).await,
            }
        }
    }

    /// Replays what a connection missed on `channels` (each after its position), holding
    /// back live messages of those channels until the replay is queued; then, for a user's
    /// connection, delivers the offline inbox. The codec's recovery marker ends each channel.
    pub fn start_recovery(
        self: &Rc<Self>,
        key: ConnKey,
        channels: Vec<(Target, Since)>,
        take_inbox: bool,
    ) {
        self.start_replay(key, channels, take_inbox, Asked::Client);
    }

    /// A socket.io session moved here from another shard: replays what each channel got
    /// after the position the session had there (None: the old shard saw nothing of the
    /// channel within the history TTL, so all the history keeps of it is owed), holding back
    /// live messages meanwhile and dropping what the session already had. The client asked
    /// for nothing, so it hears (a `recovered` event) only of a channel that could not be
    /// replayed whole.
    pub fn start_handover(self: &Rc<Self>, key: ConnKey, channels: Vec<(Target, Option<Since>)>) {
        let channels = channels
            .into_iter()
            .map(|(target, since)| match since {
                Some(since) => (target, since),
                None => (
                    target,
                    Since {
                        seq: 0,
                        epoch: None,
                    },
                ),
            })
            .collect();
        self.start_replay(key, channels, false, Asked::HandOver);
    }

    fn start_replay(
        self: &Rc<Self>,
        key: ConnKey,
        channels: Vec<(Target, Since)>,
        take_inbox: bool,
        asked: Asked,
    ) {
        let names: Vec<String> = channels.iter().map(|(t, _)| t.to_string()).collect();
        let user = self
            .hub
            .with_session(key, |s| {
                let recovering = s.recovering.get_or_insert_with(Box::<Recovering>::default);
                for (name, (_, since)) in names.iter().zip(&channels) {
                    recovering.begin(name, (since.seq, since.epoch));
                }
                s.user.as_deref().map(str::to_string)
            })
            .flatten();
        let svc = self.clone();
        let task = async move {
            svc.recover(key, names, channels, take_inbox, user, asked)
                .await
        };
        if self.ctx.tasks.spawn(task).is_err() {
            // Held-back live messages would wait for a replay that never comes: better to
            // tell the client to come back than to leave it stalled.
            Metrics::inc(&self.ctx.metrics.tasks_refused_total);
            self.hub.close(
                key,
                close_code::TRY_AGAIN_LATER,
                "server busy: reconnect and resume later",
            );
        }
    }

    /// What to replay for a client at `since`: the history after it, or, when the client's
    /// position cannot be in the channel's current numbering (another epoch, or a seq ahead
    /// of the channel), the current numbering from its start, with the reason it is no
    /// recovery.
    async fn replay_for(
        &self,
        target: &Target,
        since: Since,
        limit: usize,
    ) -> (Replay, u64, Option<String>, Option<String>) {
        let replay = match self.backend.history(target, since.seq, limit).await {
            Ok(replay) => replay,
            Err(e) => return (Replay::default(), since.seq, Some(e.to_string()), None),
        };
        let restarted = match (since.epoch, replay.epoch) {
            (Some(theirs), Some(ours)) if theirs != ours => Some(format!(
                "the channel's numbering restarted (epoch {ours}; the client's seq {} is of epoch {theirs}): messages may be lost",
                since.seq
            )),
            _ if since.seq > replay.current => Some(format!(
                "the client's seq {} is ahead of the channel's ({}): its numbering restarted; messages may be lost",
                since.seq, replay.current
            )),
            _ => None,
        };
        let Some(reason) = restarted else {
            let reason = (!replay.complete).then(|| {
                format!(
                    "messages after seq {} are no longer all in the history (--history-size, --history-ttl-s)",
                    since.seq
                )
            });
            return (replay, since.seq, None, reason);
        };
        // The client's numbers mean nothing in this numbering: give it the current one from
        // its start, and say it is not a recovery.
        match self.backend.history(target, 0, limit).await {
            Ok(replay) => (replay, 0, None, Some(reason)),
            Err(e) => (Replay::default(), 0, Some(e.to_string()), Some(reason)),
        }
    }

    async fn recover(
        self: Rc<Self>,
        key: ConnKey,
        names: Vec<String>,
        channels: Vec<(Target, Since)>,
        take_inbox: bool,
        user: Option<String>,
        asked: Asked,
    ) {
        // Cluster mode: read history and inbox only once this shard's subscriptions to
        // those channels are confirmed. A message published before that went to the
        // history (and, for a user nobody held, the inbox) and is read below; one published
        // after arrives live. Reading earlier could miss a message published in between,
        // which would be neither replayed nor delivered.
        let mut wanted = names;
        if let (true, Some(user)) = (take_inbox, &user) {
            wanted.push(format!("user:{user}"));
        }
        self.backend.wait_subscribed(&wanted).await;
        let mut user_floor = 0;
        for (target, since) in channels {
            let channel = target.to_string();
            let limit = self.ctx.config.history_size.max(1);
            let (replay, from, error, reason) = self.replay_for(&target, since, limit).await;
            let Some(codec) = self.hub.codec(key) else {
                return;
            };
            let mut replayed_to = from;
            let mut replayed = 0u64;
            for message in &replay.messages {
                // Flow control: a replay longer than the outbound queue is fed as the
                // client reads, not queued at once (which would close it as slow).
                if !self.wait_for_queue_room(key).await {
                    return;
                }
                let frame = stored_frame(&target, message, replay.epoch, codec);
                self.hub.send(key, frame);
                // A socket.io session upgrading now takes this frame with its queue, and
                // its WebSocket resumes the replay after it (services::socketio::adopt).
                self.hub.with_session(key, |s| {
                    if let Some(r) = s.recovering.as_mut() {
                        r.replayed(&channel, message.seq);
                    }
                });
                replayed_to = replayed_to.max(message.seq);
                replayed += 1;
            }
            let until_s = self.ctx.now_s() + RECOVERY_GRACE_S;
            let released = self
                .hub
                .with_session(key, |s| match s.recovering.as_mut() {
                    Some(r) => r.finish(&channel, replayed_to, until_s),
                    None => Vec::new(),
                })
                .unwrap_or_default();
            for frame in released {
                self.hub.send(key, frame);
            }
            if matches!(target, Target::User(_)) {
                user_floor = replayed_to;
            }
            Metrics::add(&self.ctx.metrics.replayed_total, replayed);
            // A hand-over from seq 0 is one from no position: what the history keeps is
            // what the session is owed, however much of the channel's start it has lost.
            let complete = replay.complete || (asked == Asked::HandOver && from == 0);
            let recovered = error.is_none() && reason.is_none() && complete;
            if asked == Asked::HandOver {
                if recovered {
                    continue;
                }
                Metrics::inc(&self.ctx.metrics.socketio_handover_incomplete_total);
            }
            let marker = codec.get().recovered(&Recovered {
                channel: &target,
                recovered,
                replayed: replay.messages.len(),
                seq: replay.current.max(replayed_to),
                epoch: replay.epoch,
                error: error.as_deref(),
                reason: reason.as_deref(),
            });
            if let Some(frame) = marker {
                self.hub.send(key, frame);
            }
        }
        if let (true, Some(user)) = (take_inbox, user) {
            let Ok(messages) = self.backend.inbox_take(&user).await else {
                return;
            };
            let Some(codec) = self.hub.codec(key) else {
                return;
            };
            let target = Target::User(user);
            let mut delivered = 0;
            for message in messages.iter().filter(|m| m.seq > user_floor) {
                if !self.wait_for_queue_room(key).await {
                    return;
                }
                // Inbox entries are of the numbering they were published in; their own
                // envelopes said which, but the inbox keeps only what clients need to ack.
                self.hub
                    .send(key, stored_frame(&target, message, None, codec));
                delivered += 1;
            }
            Metrics::add(&self.ctx.metrics.inbox_delivered_total, delivered);
        }
    }
}
