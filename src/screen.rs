//! [`HeliosScreen`]: a generated video stream shown on an entity, plus the plugin-owned
//! [`HeliosStream`] state and the public [`HeliosStreamStats`] it requires.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bevy::asset::RenderAssetUsages;
use bevy::camera::primitives::Aabb;
use bevy::platform::time::Instant;
use bevy::prelude::*;
use bevy::render::render_resource::{Extent3d, TextureDimension, TextureFormat};
use bevy::ui::ComputedNode;

use crate::core::embedding::PromptWeights;
use crate::core::stream::StreamId;
use crate::diagnostics::MainThreadCost;
use crate::error::HeliosError;
use crate::settings::{HeliosSettings, VisibilitySource};
use crate::status::HeliosModelInfo;
use crate::worker::{ToWorker, WorkerOutbox};

/// How urgently a screen's stream gets the worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StreamPriority {
    /// Decoration far away: served last.
    Background,
    /// An ordinary in-world screen.
    #[default]
    Normal,
    /// Something the player looks at or interacts with.
    Foreground,
    /// A cutscene: while one needs frames, nothing else is generated.
    Cutscene,
}

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
///   and resume where they were (see [`HeliosSettings::visibility`]).
///
/// # Change detection
/// Edit this component; the plugin only writes [`HeliosStream`] and [`HeliosStreamStats`], so your
/// `Changed<HeliosScreen>` filters fire for your own edits only. A new `prompt` shows in the next
/// generated chunk (blended over `crossfade_chunks`); a new `seed` restarts the stream (fresh history).
#[derive(Component, Clone, Debug, PartialEq)]
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
    /// Chunks a prompt change blends over (None: [`HeliosSettings::crossfade_chunks`]).
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
#[derive(Component, Debug, Default)]
pub struct HeliosStream {
    pub(crate) id: Option<StreamId>,
    pub(crate) image: Handle<Image>,
    pub(crate) opened_seed: u64,
    pub(crate) sent_prompt: Option<(PromptWeights, u32)>,
    pub(crate) sent_image: Option<AssetId<Image>>,
    pub(crate) queue: VecDeque<Vec<u8>>,
    pub(crate) frame_size: UVec2,
    pub(crate) chunks_received: u64,
    pub(crate) chunk_limit: Option<u64>,
    /// Playout seconds since the current run's first frame.
    pub(crate) clock: f64,
    /// Frames taken from the queue in the current run (the first at clock 0).
    pub(crate) run_taken: u64,
    /// Frames taken from the queue over the screen's life (shown or skipped), across stream restarts.
    pub(crate) frames_consumed: u64,
    pub(crate) on_screen: bool,
    pub(crate) apparent_size: f32,
    pub(crate) failed: Option<Arc<HeliosError>>,
    pub(crate) showing: Showing,
    pub(crate) opened_at: Option<Instant>,
    pub(crate) first_frame_pending: bool,
    /// Reopen the stream (fresh history) at the next dispatch, even with the same seed.
    pub(crate) restart_requested: bool,
}

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

    /// What the image shows.
    pub fn showing(&self) -> Showing {
        self.showing
    }

    /// Limits generation to chunk indices below `limit` (cutscene shots); None lifts it.
    pub fn set_chunk_limit(&mut self, limit: Option<u64>) {
        self.chunk_limit = limit;
    }
}

/// Where a screen's stream is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
#[derive(Component, Clone, Debug, Default)]
pub struct HeliosStreamStats {
    /// Where the stream is.
    pub state: StreamState,
    /// Frames shown per second of real time (updated twice a second).
    pub fps: f32,
    /// Wall time the worker spent on the last chunk, seconds.
    pub chunk_latency: f32,
    /// Frames queued for playout.
    pub queue_depth: usize,
    /// From opening the stream to its first frame on screen.
    pub first_frame_latency: Option<std::time::Duration>,
    /// Frames shown.
    pub frames_shown: u64,
    /// Frames skipped because several were due in one app frame.
    pub frames_dropped: u64,
    /// Frames that were due but not generated yet (the previous frame was held).
    pub frames_held: u64,
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

/// Size of images made before the model says its frame size.
const DEFAULT_SIZE: UVec2 = UVec2::new(64, 64);

/// A frame-sized image the CPU keeps (so frames can be moved in) and the GPU shows.
pub(crate) fn new_image(size: UVec2, rgba: Vec<u8>) -> Image {
    let mut image = Image::new_fill(
        Extent3d {
            width: size.x,
            height: size.y,
            depth_or_array_layers: 1,
        },
        TextureDimension::D2,
        &[0, 0, 0, 255],
        TextureFormat::Rgba8UnormSrgb,
        RenderAssetUsages::MAIN_WORLD | RenderAssetUsages::RENDER_WORLD,
    );
    image.data = Some(rgba);
    image
}

/// The waiting pattern: a dim blue-grey gradient.
pub(crate) fn placeholder_pixels(size: UVec2) -> Vec<u8> {
    let mut out = Vec::with_capacity((size.x * size.y * 4) as usize);
    for y in 0..size.y {
        for _ in 0..size.x {
            let v = (24 + 24 * y / size.y.max(1)) as u8;
            out.extend_from_slice(&[v, v, v + 12, 255]);
        }
    }
    out
}

/// The fallback image: "no signal" colour bars under dark diagonal stripes.
pub fn fallback_pixels(size: UVec2) -> Vec<u8> {
    const BARS: [[u8; 3]; 7] = [
        [192, 192, 192],
        [192, 192, 0],
        [0, 192, 192],
        [0, 192, 0],
        [192, 0, 192],
        [192, 0, 0],
        [0, 0, 192],
    ];
    let mut out = Vec::with_capacity((size.x * size.y * 4) as usize);
    for y in 0..size.y {
        for x in 0..size.x {
            let bar = BARS[(x * 7 / size.x.max(1)) as usize % 7];
            let stripe = ((x + y) / 6) % 2 == 0;
            let k = if stripe { 1 } else { 2 };
            out.extend_from_slice(&[bar[0] / k, bar[1] / k, bar[2] / k, 255]);
        }
    }
    out
}

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
    let size = info.map_or(DEFAULT_SIZE, |i| UVec2::new(i.width, i.height));
    stream.image = images.add(new_image(size, placeholder_pixels(size)));
    stream.showing = Showing::Placeholder;
    if let Ok((material, node)) = targets.get_mut(add.entity) {
        attach(&stream.image, material, node, materials.as_deref_mut());
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

/// Points a screen's material or UI node at its image.
pub(crate) fn attach(
    image: &Handle<Image>,
    material: Option<Mut<MeshMaterial3d<StandardMaterial>>>,
    node: Option<Mut<ImageNode>>,
    materials: Option<&mut Assets<StandardMaterial>>,
) {
    if let (Some(mut material), Some(materials)) = (material, materials) {
        // Each screen gets its own material, so screens sharing one don't show each other's video.
        let mut own = materials.get(&material.0).cloned().unwrap_or_default();
        // A display shows its pixels as they are: unlit, and emissive for bloom where HDR is on.
        own.unlit = true;
        own.base_color = Color::WHITE;
        own.base_color_texture = Some(image.clone());
        own.emissive = LinearRgba::WHITE;
        own.emissive_texture = Some(image.clone());
        material.0 = materials.add(own);
    }
    if let Some(mut node) = node
        && node.image != *image
    {
        node.image = image.clone();
    }
}

/// Screens whose material or UI node arrived after the screen component get attached too.
#[expect(
    clippy::type_complexity,
    reason = "screens whose display target was just added"
)]
pub(crate) fn attach_late(
    mut screens: Query<
        (
            &HeliosStream,
            Option<&mut MeshMaterial3d<StandardMaterial>>,
            Option<&mut ImageNode>,
        ),
        (
            With<HeliosScreen>,
            Or<(Added<MeshMaterial3d<StandardMaterial>>, Added<ImageNode>)>,
        ),
    >,
    mut materials: Option<ResMut<Assets<StandardMaterial>>>,
) {
    for (stream, material, node) in &mut screens {
        let material = material.filter(|m| {
            materials
                .as_ref()
                .and_then(|ms| ms.get(&m.0))
                .is_none_or(|mat| mat.base_color_texture.as_ref() != Some(&stream.image))
        });
        attach(&stream.image, material, node, materials.as_deref_mut());
    }
}

/// Decides which screens are on screen and how large they appear (for pausing and scheduling).
#[expect(
    clippy::type_complexity,
    reason = "one query over the optional visibility and size components"
)]
pub(crate) fn measure(
    mut screens: Query<(
        &mut HeliosStream,
        Option<&ViewVisibility>,
        Option<&InheritedVisibility>,
        Option<&ComputedNode>,
        Option<&GlobalTransform>,
        Option<&Aabb>,
    )>,
    cameras: Query<&GlobalTransform, With<Camera>>,
    settings: Res<HeliosSettings>,
    tracking: Res<VisibilityTracking>,
    cost: Res<MainThreadCost>,
) {
    let _cost = cost.measure();
    let read = match settings.visibility {
        VisibilitySource::Auto => tracking.0,
        VisibilitySource::Components => true,
        VisibilitySource::Ignore => false,
    };
    for (mut stream, view, inherited, node, transform, aabb) in &mut screens {
        let on_screen = !read
            || match node {
                Some(_) => inherited.is_none_or(|v| v.get()),
                None => view.is_none_or(|v| v.get()),
            };
        let size = if let Some(node) = node {
            (node.size().x * node.size().y / (1920.0 * 1080.0)).clamp(0.0, 1.0)
        } else if let (Some(t), Some(aabb)) = (transform, aabb) {
            let radius = (Vec3::from(aabb.half_extents) * t.scale()).length();
            let distance = cameras
                .iter()
                .map(|c| c.translation().distance(t.translation()))
                .fold(f32::INFINITY, f32::min);
            if distance.is_finite() {
                (radius / distance.max(1e-3)).clamp(0.0, 1.0)
            } else {
                0.5
            }
        } else {
            0.5
        };
        if stream.on_screen != on_screen {
            stream.on_screen = on_screen;
        }
        if (stream.apparent_size - size).abs() > 1e-3 {
            stream.apparent_size = size;
        }
    }
}
