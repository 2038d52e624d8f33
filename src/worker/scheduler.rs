//! Which chunk the worker generates next and how fast each screen plays: a pure function from stream
//! snapshots to a [`Schedule`]. It knows nothing of the ECS, so it is tested (and simulated) alone.
//!
//! Generation slower than playout is the normal case (the 14B model makes ~13 frames a second on an
//! H100; one screen plays 24), so the generator is shared:
//! - every active stream (on screen, not paused, not failed) gets a **share** of the measured generator
//!   rate in proportion to its [`StreamSnapshot::weight`], water-filled so that no stream gets more than
//!   it can play (`playout_fps`) and the rest goes to the others (weighted max-min fairness);
//! - each stream **plays at the rate its share sustains**, a little slower while its queue is short and a
//!   little faster while it is long (so about one chunk stays queued to absorb jitter), never slower
//!   than `min_playout_fps`: below that it plays at the floor and holds between chunks;
//! - the next chunk goes to the stream whose queue runs dry soonest **at its share** (earliest deadline
//!   first). A stream's `balance` counts the frames it played beyond (or short of) its share, so a stream
//!   that froze is owed frames and one that ran ahead at the floor rate waits: over time every stream
//!   gets chunks in proportion to its weight, and none starves;
//! - a stream that shows nothing yet comes first; a cutscene that needs frames pre-empts the others;
//!   hidden and paused streams get nothing and keep their history.

use super::protocol::ChunkRequest;
use bevy::reflect::{Reflect, std_traits::ReflectDefault};

use crate::core::stream::StreamId;

/// How urgently a screen's stream gets the generator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Reflect)]
#[reflect(Debug, Default, PartialEq)]
pub enum StreamPriority {
    /// Decoration: the smallest share.
    Background,
    /// An ordinary in-world screen.
    #[default]
    Normal,
    /// Something the player looks at or interacts with: a larger share.
    Foreground,
    /// A cutscene: while one needs frames, nothing else is generated.
    Cutscene,
}

impl StreamPriority {
    /// The class's weight in the generator's share-out: Background 1, Normal 2, Foreground 4, Cutscene 8.
    pub fn weight(self) -> f64 {
        match self {
            Self::Background => 1.0,
            Self::Normal => 2.0,
            Self::Foreground => 4.0,
            Self::Cutscene => 8.0,
        }
    }
}

/// What the scheduler knows about one stream.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamSnapshot {
    /// The stream.
    pub stream: StreamId,
    /// Its priority class.
    pub priority: StreamPriority,
    /// Seen by a camera (or a visible UI node).
    pub on_screen: bool,
    /// Apparent size on screen, 0..=1: up to doubles the stream's weight.
    pub size: f32,
    /// Paused by the user.
    pub paused: bool,
    /// Failed; waiting for a new prompt.
    pub failed: bool,
    /// Generated video is on the screen (false before the first frame of a run).
    pub showing_video: bool,
    /// Frames queued for playout.
    pub queued_frames: usize,
    /// Frames played beyond the stream's share so far (negative: frames it is owed), kept by playout.
    pub balance: f32,
    /// Chunks received so far (the stream's next chunk index, as far as the app knows).
    pub chunks_received: u64,
    /// Generate no chunk with an index at or past this (cutscene shot boundaries).
    pub chunk_limit: Option<u64>,
}

impl StreamSnapshot {
    /// Share weight: the priority's [`StreamPriority::weight`] times `1 + size`.
    pub fn weight(&self) -> f64 {
        let size = if self.size.is_finite() {
            f64::from(self.size.clamp(0.0, 1.0))
        } else {
            0.0
        };
        self.priority.weight() * (1.0 + size)
    }

    fn active(&self, p: &ScheduleParams) -> bool {
        !self.paused && !self.failed && (self.on_screen || !p.pause_hidden)
    }

    /// Chunks the stream still wants to reach `chunks_ahead` chunks of queued frames.
    fn deficit(&self, p: &ScheduleParams) -> u64 {
        let fpc = p.frames_per_chunk.max(1);
        let want_frames = p.chunks_ahead.max(1) * fpc;
        let missing = want_frames.saturating_sub(self.queued_frames);
        let mut chunks = missing.div_ceil(fpc) as u64;
        if let Some(limit) = self.chunk_limit {
            chunks = chunks.min(limit.saturating_sub(self.chunks_received));
        }
        chunks
    }
}

/// Knobs of the plan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScheduleParams {
    /// Frames per chunk.
    pub frames_per_chunk: usize,
    /// Chunks to keep queued per stream.
    pub chunks_ahead: usize,
    /// Most streams served at once (the heaviest).
    pub max_streams: usize,
    /// Off-screen streams get nothing (they pause); otherwise they compete like visible ones.
    pub pause_hidden: bool,
    /// Full playout rate, frames per second.
    pub playout_fps: f32,
    /// Slowest adaptive playout rate; below it a stream plays at this rate and holds between chunks.
    pub min_playout_fps: f32,
    /// Frames the generator makes per second of its own time, all streams together. None until
    /// measured: every stream is then assumed to get the full rate.
    pub generated_fps: Option<f32>,
}

/// One stream's part of the generator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StreamRate {
    /// The stream.
    pub stream: StreamId,
    /// Generated frames per second its share sustains (capped at the full playout rate).
    pub share_fps: f32,
    full_fps: f32,
    min_fps: f32,
    frames_per_chunk: usize,
}

impl StreamRate {
    /// Fastest and slowest factor on the share while the queue is long or short.
    const BUFFER_RANGE: (f64, f64) = (0.9, 1.1);

    /// The rate to play at with `queued_frames` waiting: the full rate when the generator keeps up;
    /// otherwise the share, 10 % slower with an empty queue and up to 10 % faster with two chunks
    /// queued (one chunk queued: exactly the share), never below the floor.
    pub fn playout_fps(&self, queued_frames: usize) -> f32 {
        let full = f64::from(self.full_fps);
        let share = f64::from(self.share_fps);
        if share >= full {
            return self.full_fps;
        }
        let (slow, fast) = Self::BUFFER_RANGE;
        let fill = queued_frames as f64 / self.frames_per_chunk.max(1) as f64;
        let factor = (slow + (1.0 - slow) * fill).clamp(slow, fast);
        (share * factor).clamp(f64::from(self.min_fps), full) as f32
    }
}

/// The plan: chunk requests, most urgent first, and every active stream's rate.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schedule {
    /// What to generate, most urgent first.
    pub requests: Vec<ChunkRequest>,
    /// Shares and playout rates of the active streams (others hold: they play nothing new).
    pub rates: Vec<StreamRate>,
    /// Streams the generator can keep at the full playout rate (None before it is measured).
    pub full_rate_streams: Option<f32>,
}

impl Schedule {
    /// The rate of `stream`, if it is active.
    pub fn rate(&self, stream: StreamId) -> Option<&StreamRate> {
        self.rates.iter().find(|r| r.stream == stream)
    }
}

/// Splits `supply` frames per second over `weights`, none above `cap` (weighted max-min fairness):
/// streams whose fair part exceeds the cap get the cap, and what they leave is shared by the rest.
pub fn water_fill(supply: f64, weights: &[f64], cap: f64) -> Vec<f64> {
    let mut share = vec![0.0; weights.len()];
    let mut open: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0.0).collect();
    let mut left = supply.max(0.0);
    loop {
        let total: f64 = open.iter().map(|&i| weights[i]).sum();
        if open.is_empty() || total <= 0.0 {
            break;
        }
        let (capped, uncapped): (Vec<usize>, Vec<usize>) = open
            .iter()
            .partition(|&&i| left * weights[i] / total >= cap);
        if capped.is_empty() {
            for &i in &open {
                share[i] = left * weights[i] / total;
            }
            break;
        }
        for &i in &capped {
            share[i] = cap;
            left -= cap;
        }
        open = uncapped;
    }
    share
}

/// Plans the next chunks and the playout rates of `streams`.
pub fn plan(streams: &[StreamSnapshot], params: &ScheduleParams) -> Schedule {
    let full = f64::from(params.playout_fps.max(0.1));
    let floor = f64::from(params.min_playout_fps).clamp(0.0, full);
    let mut active: Vec<&StreamSnapshot> = streams.iter().filter(|s| s.active(params)).collect();
    // A cutscene that needs frames takes the generator: the others hold their frame meanwhile.
    if active
        .iter()
        .any(|s| s.priority == StreamPriority::Cutscene && s.deficit(params) > 0)
    {
        active.retain(|s| s.priority == StreamPriority::Cutscene);
    }
    // At most `max_streams`: the heaviest, ties by stream id.
    active.sort_by(|a, b| {
        b.weight()
            .total_cmp(&a.weight())
            .then(a.stream.cmp(&b.stream))
    });
    active.truncate(params.max_streams.max(1));

    let weights: Vec<f64> = active.iter().map(|s| s.weight()).collect();
    let shares = match params.generated_fps {
        Some(g) if g.is_finite() && g > 0.0 => water_fill(f64::from(g), &weights, full),
        _ => vec![full; active.len()],
    };
    let rates: Vec<StreamRate> = active
        .iter()
        .zip(&shares)
        .map(|(s, &share)| StreamRate {
            stream: s.stream,
            share_fps: share.min(full) as f32,
            full_fps: full as f32,
            min_fps: floor as f32,
            frames_per_chunk: params.frames_per_chunk,
        })
        .collect();

    // Earliest deadline first, at each stream's share: seconds until its queue (plus what it played
    // beyond its share) runs dry; each further chunk a stream wants is one chunk's time later.
    let fpc = params.frames_per_chunk.max(1) as f64;
    let mut requests: Vec<(f64, f64, &StreamSnapshot, u64)> = Vec::new();
    for (s, &share) in active.iter().zip(&shares) {
        let share = share.max(1e-3);
        let ahead = s.queued_frames as f64 + f64::from(s.balance);
        for level in 1..=s.deficit(params) {
            let deadline = if level == 1 && !s.showing_video && s.queued_frames == 0 {
                f64::NEG_INFINITY
            } else {
                (ahead + (level - 1) as f64 * fpc) / share
            };
            requests.push((deadline, s.weight(), s, level));
        }
    }
    requests.sort_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then(b.1.total_cmp(&a.1))
            .then(a.2.stream.cmp(&b.2.stream))
            .then(a.3.cmp(&b.3))
    });
    let generated = params.generated_fps.filter(|g| g.is_finite() && *g > 0.0);
    Schedule {
        requests: requests
            .into_iter()
            .map(|(_, _, s, level)| ChunkRequest {
                stream: s.stream,
                until: s.chunks_received + level,
            })
            .collect(),
        rates,
        full_rate_streams: generated.map(|g| g / params.playout_fps.max(0.1)),
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
            size: 0.0,
            paused: false,
            failed: false,
            showing_video: true,
            queued_frames: 0,
            balance: 0.0,
            chunks_received: 0,
            chunk_limit: None,
        }
    }

    const P: ScheduleParams = ScheduleParams {
        frames_per_chunk: 33,
        chunks_ahead: 2,
        max_streams: 8,
        pause_hidden: true,
        playout_fps: 24.0,
        min_playout_fps: 6.0,
        generated_fps: None,
    };

    fn ids(plan: &Schedule) -> Vec<(u64, u64)> {
        plan.requests
            .iter()
            .map(|r| (r.stream.0, r.until))
            .collect()
    }

    #[test]
    fn water_fill_caps_and_redistributes() {
        let s = water_fill(60.0, &[1.0, 1.0, 4.0], 24.0);
        assert!(
            (s[2] - 24.0).abs() < 1e-9,
            "the heavy stream is capped at the playout rate: {s:?}"
        );
        assert!(
            (s[0] - 18.0).abs() < 1e-9 && (s[1] - 18.0).abs() < 1e-9,
            "what it leaves is split evenly: {s:?}"
        );
        let s = water_fill(10.0, &[1.0, 3.0], 24.0);
        assert!(
            (s[0] - 2.5).abs() < 1e-9 && (s[1] - 7.5).abs() < 1e-9,
            "below the cap, shares follow the weights: {s:?}"
        );
        let s = water_fill(100.0, &[1.0, 2.0], 24.0);
        assert_eq!(s, vec![24.0, 24.0], "plenty: everyone gets full rate");
    }

    #[test]
    fn full_queues_ask_for_nothing() {
        let mut s = snap(1, StreamPriority::Normal);
        s.queued_frames = 66;
        assert!(
            plan(&[s.clone()], &P).requests.is_empty(),
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
    fn a_stream_showing_nothing_yet_goes_first() {
        let mut fresh = snap(1, StreamPriority::Background);
        fresh.showing_video = false;
        let mut dry = snap(2, StreamPriority::Foreground);
        dry.balance = -30.0;
        let plan = plan(&[dry, fresh], &P);
        assert_eq!(
            plan.requests[0].stream,
            StreamId(1),
            "the background stream with nothing on screen beats a starving foreground one: {plan:?}"
        );
    }

    #[test]
    fn earliest_deadline_at_share_wins() {
        // 30 fps of generator for a Foreground (weight 4) and a Normal (weight 2) stream: shares 20 and 10.
        let params = ScheduleParams {
            generated_fps: Some(30.0),
            chunks_ahead: 1,
            ..P
        };
        let mut fg = snap(1, StreamPriority::Foreground);
        fg.queued_frames = 30; // dry in 1.5 s at 20 fps
        let mut normal = snap(2, StreamPriority::Normal);
        normal.queued_frames = 12; // dry in 1.2 s at 10 fps
        let plan = plan(&[fg.clone(), normal.clone()], &params);
        assert_eq!(ids(&plan), vec![(2, 1), (1, 1)], "{plan:?}");
        let rate = |p: &Schedule, id| p.rate(StreamId(id)).map(|r| r.share_fps);
        assert_eq!(rate(&plan, 1), Some(20.0));
        assert_eq!(rate(&plan, 2), Some(10.0));
        let normal_rate = plan.rate(StreamId(2)).copied();
        let at = |q| normal_rate.map_or(0.0, |r| r.playout_fps(q));
        assert!(
            (at(33) - 10.0).abs() < 1e-4
                && (at(0) - 9.0).abs() < 1e-4
                && (at(66) - 11.0).abs() < 1e-4,
            "a stream plays at its share with a chunk queued, 10 % slower with none, 10 % faster with two"
        );
        assert_eq!(plan.full_rate_streams, Some(1.25));
        // The normal stream played 10 frames beyond its share: now the foreground one is more urgent.
        normal.balance = 10.0;
        assert_eq!(
            ids(&super::plan(&[fg, normal], &params)),
            vec![(1, 1), (2, 1)]
        );
    }

    #[test]
    fn the_floor_applies_below_it() {
        let params = ScheduleParams {
            generated_fps: Some(8.0),
            ..P
        };
        let plan = plan(
            &[
                snap(1, StreamPriority::Normal),
                snap(2, StreamPriority::Normal),
            ],
            &params,
        );
        for r in &plan.rates {
            assert_eq!(r.share_fps, 4.0);
            assert_eq!(
                r.playout_fps(33),
                6.0,
                "a 4 fps share plays at the 6 fps floor and holds between chunks"
            );
        }
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
            plan.requests.iter().all(|r| r.stream == StreamId(2)),
            "only the cutscene is served: {plan:?}"
        );
        assert_eq!(plan.requests.len(), 2);
        assert_eq!(plan.rates.len(), 1, "the others hold");
    }

    #[test]
    fn hidden_paused_and_failed_streams_wait() {
        let mut hidden = snap(1, StreamPriority::Normal);
        hidden.on_screen = false;
        let mut paused = snap(2, StreamPriority::Normal);
        paused.paused = true;
        let mut failed = snap(3, StreamPriority::Normal);
        failed.failed = true;
        assert!(
            plan(&[hidden.clone(), paused, failed], &P)
                .requests
                .is_empty()
        );
        let plan = plan(
            &[hidden, snap(4, StreamPriority::Normal)],
            &ScheduleParams {
                pause_hidden: false,
                chunks_ahead: 1,
                ..P
            },
        );
        assert_eq!(
            plan.requests.len(),
            2,
            "without pausing, hidden streams are served too"
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
        assert!(plan(&[limited], &P).requests.is_empty());
        let mut many: Vec<_> = (0..5).map(|i| snap(i, StreamPriority::Normal)).collect();
        many[3].priority = StreamPriority::Foreground;
        let plan = plan(
            &many,
            &ScheduleParams {
                max_streams: 2,
                chunks_ahead: 1,
                ..P
            },
        );
        let mut served: Vec<u64> = plan.requests.iter().map(|r| r.stream.0).collect();
        served.sort_unstable();
        assert_eq!(served, vec![0, 3], "the heaviest two: {plan:?}");
    }

    /// A discrete-time model of the plugin around the scheduler: one generator making a chunk in
    /// `fpc / generated_fps` seconds for the first request of the current plan, and screens playing at
    /// their planned rates (holding when dry), keeping `balance` as playout does.
    struct Sim {
        streams: Vec<StreamSnapshot>,
        clock: Vec<f64>,
        chunks: Vec<u64>,
        first_frame: Vec<Option<f64>>,
        last_frame: Vec<f64>,
        longest_hold: Vec<f64>,
    }

    impl Sim {
        fn new(streams: Vec<StreamSnapshot>) -> Self {
            let n = streams.len();
            Self {
                streams,
                clock: vec![0.0; n],
                chunks: vec![0; n],
                first_frame: vec![None; n],
                last_frame: vec![0.0; n],
                longest_hold: vec![0.0; n],
            }
        }

        /// Runs `seconds` with a generator of `fps` generated frames per second under `policy`.
        fn run(&mut self, seconds: f64, fps: f64, params: &ScheduleParams, policy: Policy) {
            const DT: f64 = 1.0 / 60.0;
            let fpc = params.frames_per_chunk;
            let chunk_time = fpc as f64 / fps;
            let mut busy: Option<(usize, f64)> = None;
            let mut t = 0.0;
            while t < seconds {
                let schedule = plan(&self.streams, params);
                let next = match policy {
                    Policy::Fair => schedule.requests.first().map(|r| r.stream),
                    Policy::Old => old_order(&self.streams, params),
                };
                if busy.is_none()
                    && let Some(next) = next
                {
                    let i = self
                        .streams
                        .iter()
                        .position(|s| s.stream == next)
                        .unwrap_or(0);
                    busy = Some((i, t + chunk_time));
                }
                if let Some((i, done)) = busy
                    && t >= done
                {
                    self.streams[i].queued_frames += fpc;
                    self.streams[i].chunks_received += 1;
                    self.chunks[i] += 1;
                    busy = None;
                }
                for (i, s) in self.streams.iter_mut().enumerate() {
                    // The old playout: every visible stream at the full rate.
                    let (share, playout) = match (policy, schedule.rate(s.stream)) {
                        (Policy::Fair, Some(r)) => (r.share_fps, r.playout_fps(s.queued_frames)),
                        (Policy::Fair, None) => continue,
                        (Policy::Old, _) => (0.0, params.playout_fps),
                    };
                    if !s.showing_video {
                        if s.queued_frames > 0 {
                            s.queued_frames -= 1;
                            s.showing_video = true;
                            self.first_frame[i] = Some(t);
                            self.last_frame[i] = t;
                        }
                        continue;
                    }
                    self.clock[i] += DT * f64::from(playout);
                    s.balance -= (DT * f64::from(share)) as f32;
                    while self.clock[i] >= 1.0 {
                        self.clock[i] -= 1.0;
                        if s.queued_frames == 0 {
                            self.clock[i] = 0.0;
                            break;
                        }
                        s.queued_frames -= 1;
                        s.balance += 1.0;
                        self.longest_hold[i] = self.longest_hold[i].max(t - self.last_frame[i]);
                        self.last_frame[i] = t;
                    }
                    let cap = (2 * fpc) as f32;
                    s.balance = s.balance.clamp(-cap, cap);
                }
                t += DT;
            }
        }
    }

    fn mixed(n: u64) -> Vec<StreamSnapshot> {
        (0..n)
            .map(|i| {
                let mut s = snap(
                    i + 1,
                    [
                        StreamPriority::Normal,
                        StreamPriority::Foreground,
                        StreamPriority::Background,
                    ][i as usize % 3],
                );
                s.size = [0.1, 0.6, 0.3, 0.0][i as usize % 4];
                s.showing_video = false;
                s
            })
            .collect()
    }

    /// How the simulated plugin picks chunks and plays them.
    #[derive(Clone, Copy)]
    enum Policy {
        /// This scheduler and adaptive playout.
        Fair,
        /// The plugin before it: priority, then size, then id; every stream at the full rate.
        Old,
    }

    /// Orders `f32` sizes for sorting (NaN as 0).
    fn cmp_size(a: f32, b: f32) -> std::cmp::Ordering {
        let clean = |v: f32| if v.is_finite() { v } else { 0.0 };
        clean(a).total_cmp(&clean(b))
    }

    /// The order of the plugin before the fair scheduler: priority, then size, then id.
    fn old_order(streams: &[StreamSnapshot], params: &ScheduleParams) -> Option<StreamId> {
        streams
            .iter()
            .filter(|s| s.active(params) && s.deficit(params) > 0)
            .max_by(|a, b| {
                a.priority
                    .cmp(&b.priority)
                    .then(cmp_size(a.size, b.size))
                    .then(b.stream.cmp(&a.stream))
            })
            .map(|s| s.stream)
    }

    /// Chunks per stream over a run at 30 generated frames per second, against the weights.
    fn fairness(sim: &Sim) -> Vec<f64> {
        let total_w: f64 = sim.streams.iter().map(StreamSnapshot::weight).sum();
        let total_c: u64 = sim.chunks.iter().sum();
        sim.streams
            .iter()
            .zip(&sim.chunks)
            .map(|(s, &c)| (c as f64 / total_c.max(1) as f64) / (s.weight() / total_w))
            .collect()
    }

    #[test]
    fn overload_is_shared_by_weight_and_nobody_starves() {
        for (n, g) in [(3, 20.0), (3, 30.0), (8, 30.0)] {
            let params = ScheduleParams {
                generated_fps: Some(g as f32),
                ..P
            };
            let mut sim = Sim::new(mixed(n));
            sim.run(600.0, g, &params, Policy::Fair);
            let ratios = fairness(&sim);
            eprintln!(
                "{n} streams at {g} fps: chunks {:?}, share ratios {ratios:.2?}, longest holds {:.2?} s",
                sim.chunks, sim.longest_hold
            );
            for (i, r) in ratios.iter().enumerate() {
                assert!(
                    (0.8..=1.2).contains(r),
                    "{n} streams at {g} fps: stream {i} got {r:.2}x its weighted share of chunks ({:?}, ratios {ratios:.2?})",
                    sim.chunks
                );
                assert!(
                    sim.first_frame[i].is_some_and(|t| t < 2.0 * n as f64 * 33.0 / g),
                    "{n} streams at {g} fps: stream {i} shows video within one round of first chunks ({:?})",
                    sim.first_frame
                );
            }
            // A stream whose share is under the floor plays a chunk at the floor rate and holds until
            // its next one: at most one chunk's worth of its share, plus two chunks of generator time.
            let schedule = plan(&sim.streams, &params);
            for (i, hold) in sim.longest_hold.iter().enumerate() {
                let share = schedule
                    .rate(sim.streams[i].stream)
                    .map_or(0.0, |r| r.share_fps);
                let bound = 33.0 / f64::from(share) + 2.0 * 33.0 / g;
                assert!(
                    *hold < bound,
                    "{n} streams at {g} fps: stream {i} (share {share:.1} fps) held a frame {hold:.1} s, bound {bound:.1} s: {:?}",
                    sim.longest_hold
                );
            }
        }
    }

    #[test]
    fn the_old_order_starved_streams() {
        // 20 generated frames a second for three screens: the heaviest screen alone could use them all.
        let params = ScheduleParams {
            generated_fps: Some(20.0),
            ..P
        };
        let mut sim = Sim::new(mixed(3));
        sim.run(600.0, 20.0, &params, Policy::Old);
        eprintln!("old order, 3 streams at 20 fps: chunks {:?}", sim.chunks);
        assert!(
            sim.chunks.contains(&0),
            "the priority-then-size order gives some stream nothing under overload: {:?}",
            sim.chunks
        );
    }

    #[test]
    fn enough_generator_plays_everyone_at_full_rate() {
        let params = ScheduleParams {
            generated_fps: Some(100.0),
            ..P
        };
        let mut sim = Sim::new(mixed(3));
        sim.run(120.0, 100.0, &params, Policy::Fair);
        let schedule = plan(&sim.streams, &params);
        assert!(
            schedule.rates.iter().all(|r| r.playout_fps(0) == 24.0),
            "{schedule:?}"
        );
        assert!(
            sim.longest_hold.iter().all(|h| *h < 0.1),
            "no stream holds a frame: {:?}",
            sim.longest_hold
        );
    }
}
