//! Screens: [`HeliosScreen`] (a generated video stream shown on an entity, the component users edit),
//! the plugin-owned [`HeliosStream`] state and the public [`HeliosStreamStats`] it requires.
//!
//! Screens own their streams: `lifecycle` opens, restarts and closes them and turns screen edits
//! (prompt, seed, reference image) into worker requests; `display` makes and attaches the image and
//! measures visibility; `reference` reads image-to-video references back from the GPU. The worker
//! only plans and generates; playout shows the frames.

pub(crate) mod display;
pub(crate) mod lifecycle;
pub(crate) mod reference;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bevy::platform::time::Instant;
use bevy::prelude::*;

pub use crate::worker::scheduler::StreamPriority;
pub use display::fallback_pixels;

use crate::core::embedding::PromptWeights;
use crate::core::stream::StreamId;
use crate::diagnostics::MainThreadCost;
use crate::error::HeliosError;
use crate::status::HeliosModelInfo;
use crate::worker::{ToWorker, WorkerOutbox};

/// A screen showing a generated video stream.
///
/// Put it on an entity with a `MeshMaterial3d<StandardMaterial>` (the plugin gives the entity its own
/// unlit copy of the material, with the video as base colour and emissive texture) or a UI `ImageNode` (the
/// plugin sets its image). Any entity works: [`HeliosStream::image`] is the video either way.
///
/// # Required components
/// [`HeliosStream`] (the plugin's state: stream id, frame queue, image) and [`HeliosStreamStats`].
///
/// # Optional components
/// - `MeshMaterial3d<StandardMaterial>` or `ImageNode`: where the video is shown.
/// - `ViewVisibility` / `InheritedVisibility`: off-screen screens pause, keeping their history,
///   and resume where they were (see [`HeliosSettings::visibility`](crate::settings::HeliosSettings::visibility)).
///
/// # Change detection
/// Edit this component; the plugin only writes [`HeliosStream`] and [`HeliosStreamStats`], so your
/// `Changed<HeliosScreen>` filters fire for your own edits only. A new `prompt` shows in the next
/// generated chunk (blended over `crossfade_chunks`); a new `seed` restarts the stream (fresh history).
#[derive(Component, Clone, Debug, PartialEq, Reflect)]
#[reflect(Component, Default, Debug, PartialEq)]
#[require(HeliosStream, HeliosStreamStats)]
pub struct HeliosScreen {
    /// Prompt weights over the model's prompt bank.
    pub prompt: PromptWeights,
    /// Seed of the stream; changing it restarts the stream.
    pub seed: u64,
    /// Scheduling priority.
    pub priority: StreamPriority,
    /// Stop generating and hold the current frame (history is kept).
    pub paused: bool,
    /// Chunks a prompt change blends over (None: [`HeliosSettings::crossfade_chunks`](crate::settings::HeliosSettings::crossfade_chunks)).
    pub crossfade_chunks: Option<u32>,
    /// Image-to-video: condition the stream on this image (sent when the handle changes). A camera's
    /// render target works too: its pixels are read back from the GPU.
    pub image: Option<Handle<Image>>,
}

impl Default for HeliosScreen {
    fn default() -> Self {
        Self::new(PromptWeights::one("day"))
    }
}

impl HeliosScreen {
    /// A screen with these prompt weights, seed 0, normal priority.
    pub fn new(prompt: PromptWeights) -> Self {
        Self {
            prompt,
            seed: 0,
            priority: StreamPriority::Normal,
            paused: false,
            crossfade_chunks: None,
            image: None,
        }
    }

    /// Builder: seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Builder: priority.
    pub fn with_priority(mut self, priority: StreamPriority) -> Self {
        self.priority = priority;
        self
    }

    /// Builder: crossfade length in chunks.
    pub fn with_crossfade(mut self, chunks: u32) -> Self {
        self.crossfade_chunks = Some(chunks);
        self
    }
}

/// What a screen's image shows right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Reflect)]
#[reflect(Debug, Default, PartialEq)]
#[non_exhaustive]
pub enum Showing {
    /// The waiting pattern (model loading, first chunk not here yet).
    #[default]
    Placeholder,
    /// Generated frames.
    Video,
    /// The fallback image: the model or this stream failed.
    Fallback,
}

/// The plugin's per-screen state (required by [`HeliosScreen`]; written only by the plugin).
///
/// Reflected read-mostly for inspectors: the frame queue, timers and failure are not reflected.
#[derive(Component, Debug, Default, Reflect)]
#[reflect(Component, Default, Debug)]
pub struct HeliosStream {
    pub(crate) id: Option<StreamId>,
    pub(crate) image: Handle<Image>,
    pub(crate) opened_seed: u64,
    pub(crate) sent_prompt: Option<(PromptWeights, u32)>,
    pub(crate) sent_image: Option<AssetId<Image>>,
    #[reflect(ignore)]
    pub(crate) queue: VecDeque<Vec<u8>>,
    pub(crate) frame_size: UVec2,
    pub(crate) chunks_received: u64,
    pub(crate) chunk_limit: Option<u64>,
    /// Frames due but not taken yet (the fractional part carries over between app frames).
    pub(crate) phase: f64,
    /// Frames taken from the queue over the screen's life (shown or skipped), across stream restarts.
    pub(crate) frames_consumed: u64,
    /// Frames played beyond the stream's share of the generator (negative: owed); see the scheduler.
    pub(crate) balance: f32,
    /// Playout seconds at which a due frame was missing (the screen has been frozen since).
    pub(crate) frozen_since: Option<f64>,
    /// Chunk arrivals of the last [`SUSTAINED_WINDOW`]: (real seconds, frames).
    #[reflect(ignore)]
    pub(crate) arrivals: VecDeque<(f64, usize)>,
    pub(crate) on_screen: bool,
    pub(crate) apparent_size: f32,
    #[reflect(ignore)]
    pub(crate) failed: Option<Arc<HeliosError>>,
    pub(crate) showing: Showing,
    #[reflect(ignore)]
    pub(crate) opened_at: Option<Instant>,
    pub(crate) first_frame_pending: bool,
    /// Reopen the stream (fresh history) at the next sync, even with the same seed.
    pub(crate) restart_requested: bool,
}

/// Seconds of chunk arrivals that [`HeliosStreamStats::generated_fps`] averages over.
pub(crate) const SUSTAINED_WINDOW: f64 = 30.0;

impl HeliosStream {
    /// The image the video is written into.
    pub fn image(&self) -> &Handle<Image> {
        &self.image
    }

    /// The current stream id (None before the plugin opened it).
    pub fn stream_id(&self) -> Option<StreamId> {
        self.id
    }

    /// Frames waiting for playout.
    pub fn queued_frames(&self) -> usize {
        self.queue.len()
    }

    /// Frames taken for playout over the screen's life (shown or skipped to keep time).
    pub fn frames_consumed(&self) -> u64 {
        self.frames_consumed
    }

    /// Chunks received for the current stream.
    pub fn chunks_received(&self) -> u64 {
        self.chunks_received
    }

    /// Why the stream failed, if it did.
    pub fn failure(&self) -> Option<&Arc<HeliosError>> {
        self.failed.as_ref()
    }

    /// How large the screen appears, 0..=1 (part of its share of the generator).
    pub fn apparent_size(&self) -> f32 {
        self.apparent_size
    }

    /// What the image shows.
    pub fn showing(&self) -> Showing {
        self.showing
    }

    /// Limits generation to chunk indices below `limit` (cutscene shots); None lifts it.
    pub(crate) fn set_chunk_limit(&mut self, limit: Option<u64>) {
        self.chunk_limit = limit;
    }

    /// Reopens the stream with fresh history at the next sync (a cutscene's hard cut).
    pub(crate) fn request_restart(&mut self) {
        self.restart_requested = true;
    }

    /// Records a chunk of `frames` arriving at `now` (real seconds) and returns the frames per second
    /// generated for this stream: the frames after the oldest remembered arrival over the time since
    /// it, remembering the last [`SUSTAINED_WINDOW`] (and at least the previous arrival, so a stream that
    /// gets a chunk every 20 s still has a rate).
    pub(crate) fn record_arrival(&mut self, now: f64, frames: usize) -> f32 {
        self.arrivals.push_back((now, frames));
        while self.arrivals.len() > 2
            && self
                .arrivals
                .front()
                .is_some_and(|(t, _)| now - t > SUSTAINED_WINDOW)
        {
            self.arrivals.pop_front();
        }
        let Some(&(first, _)) = self.arrivals.front() else {
            return 0.0;
        };
        let span = now - first;
        if span <= 0.0 {
            return 0.0;
        }
        let frames: usize = self.arrivals.iter().skip(1).map(|(_, f)| f).sum();
        (frames as f64 / span) as f32
    }
}

/// Where a screen's stream is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Reflect)]
#[reflect(Debug, Default, PartialEq)]
#[non_exhaustive]
pub enum StreamState {
    /// Waiting for the model or the first chunk.
    #[default]
    Waiting,
    /// Playing frames.
    Playing,
    /// Paused by [`HeliosScreen::paused`].
    Paused,
    /// Off screen: paused until seen again.
    Hidden,
    /// Failed: showing the fallback image.
    Failed,
}

/// Per-screen metrics (required by [`HeliosScreen`]; the inspector shows them).
#[derive(Component, Clone, Debug, Default, Reflect)]
#[reflect(Component, Default, Debug)]
pub struct HeliosStreamStats {
    /// Where the stream is.
    pub state: StreamState,
    /// Frames shown per second of real time (updated twice a second).
    pub fps: f32,
    /// Frames generated for this stream per second, sustained over the last 30 s of chunk arrivals (at
    /// least the last two); updated when a chunk arrives.
    pub generated_fps: f32,
    /// The stream's share of the generator in frames per second (the full playout rate when the
    /// generator keeps up).
    pub share_fps: f32,
    /// The rate the screen plays at now: [`HeliosSettings::playout_fps`](crate::settings::HeliosSettings)
    /// when generation keeps up, else what its share sustains, down to
    /// [`HeliosSettings::min_playout_fps`](crate::settings::HeliosSettings).
    pub playout_fps: f32,
    /// Wall time the worker spent on the last chunk, seconds.
    pub chunk_latency: f32,
    /// Frames queued for playout.
    pub queue_depth: usize,
    /// From opening the stream to its first frame on screen.
    pub first_frame_latency: Option<Duration>,
    /// Frames shown.
    pub frames_shown: u64,
    /// Frames skipped because several were due in one app frame.
    pub frames_dropped: u64,
    /// Frames that were due but not generated yet (the previous frame was held).
    pub frames_held: u64,
    /// Time the screen held a frame because the next one was due but not generated (after its first
    /// frame, while on screen and not paused).
    pub frozen: Duration,
    /// The longest such hold.
    pub longest_freeze: Duration,
    /// Chunks received over the screen's life.
    pub chunks: u64,
    /// Prompt weights of the last chunk received.
    pub last_chunk_prompt: Option<PromptWeights>,
    /// Index of the last chunk received.
    pub last_chunk_index: Option<u64>,
    pub(crate) fps_window: (f64, u32),
}

/// Index from stream ids to screen entities; allocates ids.
#[derive(Resource, Debug, Default)]
pub struct HeliosStreams {
    next: u64,
    by_stream: HashMap<StreamId, Entity>,
}

impl HeliosStreams {
    /// A new id for `entity`.
    pub(crate) fn allocate(&mut self, entity: Entity) -> StreamId {
        self.next += 1;
        let id = StreamId(self.next);
        self.by_stream.insert(id, entity);
        id
    }

    /// Forgets a stream.
    pub(crate) fn remove(&mut self, id: StreamId) {
        self.by_stream.remove(&id);
    }

    /// The screen entity of a stream.
    pub fn entity(&self, id: StreamId) -> Option<Entity> {
        self.by_stream.get(&id).copied()
    }

    /// Number of open streams.
    pub fn len(&self) -> usize {
        self.by_stream.len()
    }

    /// True when no stream is open.
    pub fn is_empty(&self) -> bool {
        self.by_stream.is_empty()
    }
}

/// Whether Bevy's visibility systems run in this app (decided in `HeliosPlugin::finish`).
#[derive(Resource, Clone, Copy, Debug, Default)]
pub struct VisibilityTracking(pub bool);

/// Observer: a new screen gets its image, shown on its material or UI node. Its stream is opened by
/// the next dispatch (so spawning screens before the worker exists is fine).
pub(crate) fn open_stream(
    add: On<Add, HeliosScreen>,
    mut streams: Query<&mut HeliosStream>,
    mut targets: Query<(
        Option<&mut MeshMaterial3d<StandardMaterial>>,
        Option<&mut ImageNode>,
    )>,
    mut images: ResMut<Assets<Image>>,
    mut materials: Option<ResMut<Assets<StandardMaterial>>>,
    info: Option<Res<HeliosModelInfo>>,
    cost: Res<MainThreadCost>,
) {
    let _cost = cost.measure();
    let Ok(mut stream) = streams.get_mut(add.entity) else {
        return;
    };
    let size = info.map_or(display::DEFAULT_SIZE, |i| UVec2::new(i.width, i.height));
    stream.image = images.add(display::new_image(size, display::placeholder_pixels(size)));
    stream.showing = Showing::Placeholder;
    if let Ok((material, node)) = targets.get_mut(add.entity) {
        display::attach(&stream.image, material, node, materials.as_deref_mut());
    }
}

/// Observer: a screen went away (component removed or entity despawned): close its stream.
pub(crate) fn close_stream(
    remove: On<Remove, HeliosScreen>,
    streams: Query<&HeliosStream>,
    mut registry: ResMut<HeliosStreams>,
    mut outbox: ResMut<WorkerOutbox>,
) {
    if let Ok(stream) = streams.get(remove.entity)
        && let Some(id) = stream.id
    {
        registry.remove(id);
        outbox.push(ToWorker::Close { stream: id });
    }
}
