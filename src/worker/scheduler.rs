//! Which chunk the worker should generate next: a pure function from stream snapshots to an ordered
//! plan of [`ChunkRequest`]s. Cutscenes pre-empt everything else; then higher priority, then the
//! stream's most-needed chunk (every stream's next chunk before anyone's second), then on-screen
//! streams, then larger ones, then the stream served least so far (equal streams take turns).

use std::cmp::Reverse;

use super::protocol::ChunkRequest;
use crate::core::stream::StreamId;
use crate::screen::StreamPriority;

/// What the scheduler knows about one stream.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamSnapshot {
    /// The stream.
    pub stream: StreamId,
    /// Its priority class.
    pub priority: StreamPriority,
    /// Seen by a camera (or a visible UI node).
    pub on_screen: bool,
    /// Apparent size on screen, 0..=1 (a tie-breaker).
    pub size: f32,
    /// Paused by the user.
    pub paused: bool,
    /// Failed; waiting for a new prompt.
    pub failed: bool,
    /// Frames queued for playout.
    pub queued_frames: usize,
    /// Chunks received so far (the stream's next chunk index, as far as the app knows).
    pub chunks_received: u64,
    /// Generate no chunk with an index at or past this (cutscene shot boundaries).
    pub chunk_limit: Option<u64>,
}

/// Knobs of the plan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScheduleParams {
    /// Frames per chunk.
    pub frames_per_chunk: usize,
    /// Chunks to keep queued per stream.
    pub chunks_ahead: usize,
    /// Most streams served at once.
    pub max_streams: usize,
    /// Off-screen streams get nothing (they pause); otherwise they come after on-screen ones.
    pub pause_hidden: bool,
}

/// Chunks a stream still wants to reach `chunks_ahead` chunks of queued frames.
fn deficit(s: &StreamSnapshot, p: &ScheduleParams) -> u64 {
    let fpc = p.frames_per_chunk.max(1);
    let want_frames = p.chunks_ahead.max(1) * fpc;
    let missing = want_frames.saturating_sub(s.queued_frames);
    let mut chunks = missing.div_ceil(fpc) as u64;
    if let Some(limit) = s.chunk_limit {
        chunks = chunks.min(limit.saturating_sub(s.chunks_received));
    }
    chunks
}

/// Orders the chunk requests of `streams`, most urgent first.
pub fn plan(streams: &[StreamSnapshot], params: &ScheduleParams) -> Vec<ChunkRequest> {
    let mut eligible: Vec<&StreamSnapshot> = streams
        .iter()
        .filter(|s| !s.paused && !s.failed && (s.on_screen || !params.pause_hidden))
        .filter(|s| deficit(s, params) > 0)
        .collect();
    // A cutscene that needs frames takes the worker: billboards hold their last frame meanwhile.
    if eligible
        .iter()
        .any(|s| s.priority == StreamPriority::Cutscene)
    {
        eligible.retain(|s| s.priority == StreamPriority::Cutscene);
    }
    // Serve at most `max_streams`, the most important ones.
    eligible.sort_by(|a, b| {
        (
            Reverse(a.priority),
            Reverse(a.on_screen),
            Reverse(ordered(a.size)),
            a.stream,
        )
            .cmp(&(
                Reverse(b.priority),
                Reverse(b.on_screen),
                Reverse(ordered(b.size)),
                b.stream,
            ))
    });
    eligible.truncate(params.max_streams.max(1));

    let mut requests: Vec<(u64, &StreamSnapshot)> = Vec::new();
    for s in &eligible {
        for level in 1..=deficit(s, params) {
            requests.push((level, s));
        }
    }
    // Priority first; within a class every stream's next chunk before anyone's second; then
    // on-screen, larger, and the stream served least so far (so equal streams take turns).
    requests.sort_by_key(|(level, s)| {
        (
            Reverse(s.priority),
            *level,
            Reverse(s.on_screen),
            Reverse(ordered(s.size)),
            s.chunks_received,
            s.stream,
        )
    });
    requests
        .into_iter()
        .map(|(level, s)| ChunkRequest {
            stream: s.stream,
            until: s.chunks_received + level,
        })
        .collect()
}

/// Sizes as a total order (NaN counts as 0).
fn ordered(size: f32) -> u32 {
    if size.is_finite() {
        (size.clamp(0.0, 1.0) * 1_000_000.0) as u32
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: u64, priority: StreamPriority) -> StreamSnapshot {
        StreamSnapshot {
            stream: StreamId(id),
            priority,
            on_screen: true,
            size: 0.5,
            paused: false,
            failed: false,
            queued_frames: 0,
            chunks_received: 0,
            chunk_limit: None,
        }
    }

    const P: ScheduleParams = ScheduleParams {
        frames_per_chunk: 33,
        chunks_ahead: 2,
        max_streams: 8,
        pause_hidden: true,
    };

    fn ids(plan: &[ChunkRequest]) -> Vec<(u64, u64)> {
        plan.iter().map(|r| (r.stream.0, r.until)).collect()
    }

    #[test]
    fn empty_queues_interleave_first_chunks() {
        let plan = plan(
            &[
                snap(1, StreamPriority::Normal),
                snap(2, StreamPriority::Normal),
            ],
            &P,
        );
        assert_eq!(
            ids(&plan),
            vec![(1, 1), (2, 1), (1, 2), (2, 2)],
            "every stream's first chunk comes first"
        );
    }

    #[test]
    fn full_queues_ask_for_nothing() {
        let mut s = snap(1, StreamPriority::Normal);
        s.queued_frames = 66;
        assert!(
            plan(&[s.clone()], &P).is_empty(),
            "two chunks queued: nothing to do"
        );
        s.queued_frames = 40;
        s.chunks_received = 5;
        assert_eq!(
            ids(&plan(&[s], &P)),
            vec![(1, 6)],
            "one chunk short: one request for chunk index 5"
        );
    }

    #[test]
    fn equal_streams_take_turns() {
        let mut served = snap(1, StreamPriority::Normal);
        served.chunks_received = 10;
        let fresh = snap(2, StreamPriority::Normal);
        let plan = plan(
            &[served, fresh],
            &ScheduleParams {
                chunks_ahead: 1,
                ..P
            },
        );
        assert_eq!(
            ids(&plan),
            vec![(2, 1), (1, 11)],
            "the stream served least goes first"
        );
    }

    #[test]
    fn cutscene_preempts_billboards() {
        let plan = plan(
            &[
                snap(1, StreamPriority::Foreground),
                snap(2, StreamPriority::Cutscene),
                snap(3, StreamPriority::Normal),
            ],
            &P,
        );
        assert!(
            plan.iter().all(|r| r.stream == StreamId(2)),
            "only the cutscene is served: {plan:?}"
        );
        assert_eq!(plan.len(), 2);
    }

    #[test]
    fn priority_then_size() {
        let mut big = snap(1, StreamPriority::Normal);
        big.size = 0.9;
        let mut small = snap(2, StreamPriority::Normal);
        small.size = 0.1;
        let high = snap(3, StreamPriority::Foreground);
        let plan = plan(
            &[small, big, high],
            &ScheduleParams {
                chunks_ahead: 1,
                ..P
            },
        );
        assert_eq!(ids(&plan), vec![(3, 1), (1, 1), (2, 1)]);
    }

    #[test]
    fn hidden_paused_and_failed_streams_wait() {
        let mut hidden = snap(1, StreamPriority::Normal);
        hidden.on_screen = false;
        let mut paused = snap(2, StreamPriority::Normal);
        paused.paused = true;
        let mut failed = snap(3, StreamPriority::Normal);
        failed.failed = true;
        assert!(plan(&[hidden.clone(), paused, failed], &P).is_empty());
        let plan = plan(
            &[hidden, snap(4, StreamPriority::Normal)],
            &ScheduleParams {
                pause_hidden: false,
                chunks_ahead: 1,
                ..P
            },
        );
        assert_eq!(
            ids(&plan),
            vec![(4, 1), (1, 1)],
            "without pausing, hidden streams come after visible ones"
        );
    }

    #[test]
    fn chunk_limit_and_max_streams() {
        let mut limited = snap(1, StreamPriority::Cutscene);
        limited.chunks_received = 3;
        limited.chunk_limit = Some(4);
        assert_eq!(
            ids(&plan(&[limited.clone()], &P)),
            vec![(1, 4)],
            "never past the shot boundary"
        );
        limited.chunks_received = 4;
        assert!(plan(&[limited], &P).is_empty());
        let many: Vec<_> = (0..5).map(|i| snap(i, StreamPriority::Normal)).collect();
        let plan = plan(
            &many,
            &ScheduleParams {
                max_streams: 2,
                chunks_ahead: 1,
                ..P
            },
        );
        assert_eq!(ids(&plan), vec![(0, 1), (1, 1)]);
    }
}
