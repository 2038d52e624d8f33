//! [`HeliosSettings`]: where the model is, which providers to try, how fast to play and how much to
//! generate ahead. Pass it to [`HeliosPlugin::with_settings`](crate::plugin::HeliosPlugin::with_settings)
//! or insert the resource before the plugin. The model, providers, GPU budget and backend are read
//! when the worker starts (in `Startup`); playout rates, streams, look-ahead, crossfade, visibility,
//! fast start and the cutscene load timeout apply while running.

use std::path::PathBuf;
use std::time::Duration;

use bevy::prelude::*;

use crate::backend::{HeliosBackend, LoadRequest, resolve_model_dir};
use crate::core::runtime::{Provider, RuntimeConfig};

/// Which components decide whether a screen is on screen (off-screen screens pause).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Reflect)]
#[reflect(Debug, Default, PartialEq)]
#[non_exhaustive]
pub enum VisibilitySource {
    /// Read `ViewVisibility` (meshes) and `InheritedVisibility` (UI nodes) when Bevy's visibility
    /// systems run (`VisibilityPlugin`, part of `DefaultPlugins`); otherwise every screen is on screen.
    #[default]
    Auto,
    /// Always read the components, even if nothing computes them (tests set them by hand).
    Components,
    /// Every screen is always on screen: nothing pauses for visibility.
    Ignore,
}

/// Settings of the Helios plugin.
///
/// Reflected (for inspectors and the remote protocol) except `providers` and `backend`.
#[derive(Resource, Clone, Debug, Reflect)]
#[reflect(Resource, Default, Debug)]
pub struct HeliosSettings {
    /// The exported model directory (default `models/helios-nano`, the small trained model; `models/helios-tiny`
    /// is the random-weight parity model). Relative paths are resolved against the working directory, then
    /// the executable's directory, then this crate's directory ([`resolve_model_dir`]).
    pub model_dir: PathBuf,
    /// Execution providers to try in order (default TensorRT, CUDA, CPU).
    #[reflect(ignore)]
    pub providers: Vec<Provider>,
    /// CPU threads per graph (None: ONNX Runtime's default).
    pub intra_threads: Option<usize>,
    /// Check model file hashes on load.
    pub verify_hashes: bool,
    /// GPU budget: CUDA arena limit in bytes, applied to every CUDA provider of the chain.
    pub gpu_memory_limit: Option<usize>,
    /// Playout rate of every screen, frames per second (Helios is trained at 24).
    pub playout_fps: f32,
    /// Slowest rate a screen plays at when generation cannot keep up: each screen plays at what its
    /// share of the generator sustains, but not below this; below it, the screen plays at this rate
    /// and holds its last frame until the next chunk arrives.
    pub min_playout_fps: f32,
    /// Most streams generating at once; the scheduler serves the heaviest ones (priority and size).
    pub max_streams: usize,
    /// Chunks to keep queued ahead of playout per stream (1 = least latency to prompt changes,
    /// 2 = fewer stalls).
    pub chunks_ahead: usize,
    /// Skip the doubled step count of each stream's first chunk ("amplify"): faster first frame, at
    /// some quality cost. Can be changed at run time.
    pub fast_start: bool,
    /// Default chunks a prompt change blends over (a screen may override).
    pub crossfade_chunks: u32,
    /// How screens are found to be off screen.
    pub visibility: VisibilitySource,
    /// What the worker loads (ONNX Runtime by default).
    #[reflect(ignore)]
    pub backend: HeliosBackend,
    /// Worker restarts after panics before the plugin gives up (status `Failed`).
    pub max_restarts: u32,
    /// Longest a [`PlayCutscene`](crate::cutscene::PlayCutscene) waits for its asset to load before it ends
    /// with a `Failed` outcome (a file on a slow disk or a network asset source may need more).
    pub cutscene_load_timeout: Duration,
}

impl Default for HeliosSettings {
    fn default() -> Self {
        Self {
            model_dir: PathBuf::from("models/helios-nano"),
            providers: Provider::default_chain(),
            intra_threads: None,
            verify_hashes: true,
            gpu_memory_limit: None,
            playout_fps: 24.0,
            min_playout_fps: 8.0,
            max_streams: 8,
            chunks_ahead: 2,
            fast_start: false,
            crossfade_chunks: 1,
            visibility: VisibilitySource::Auto,
            backend: HeliosBackend::onnx(),
            max_restarts: 3,
            cutscene_load_timeout: Duration::from_secs(30),
        }
    }
}

/// Fastest playout rate kept; above it a screen would consume a chunk in a frame or two.
const MAX_PLAYOUT_FPS: f32 = 240.0;
/// Most chunks queued ahead per stream: each is a chunk of decoded frames in memory.
const MAX_CHUNKS_AHEAD: usize = 8;

impl HeliosSettings {
    /// Replaces values that would break playout or scheduling (non-finite or non-positive rates, a floor above
    /// the rate, look-ahead of 0 or of more than 8 chunks, more CPU threads than 4x the machine's) with the
    /// nearest usable ones, and returns what it changed, field by field. The plugin applies this whenever the
    /// resource changes and logs each change as a warning.
    pub fn sanitize(&mut self) -> Vec<String> {
        let defaults = Self::default();
        let mut changed = Vec::new();
        let mut note = |field: &str, was: String, now: String| {
            changed.push(format!(
                "HeliosSettings::{field} = {was} is not usable; using {now}"
            ));
        };
        if !(self.playout_fps.is_finite() && self.playout_fps > 0.0) {
            note(
                "playout_fps",
                self.playout_fps.to_string(),
                defaults.playout_fps.to_string(),
            );
            self.playout_fps = defaults.playout_fps;
        } else if self.playout_fps > MAX_PLAYOUT_FPS {
            note(
                "playout_fps",
                self.playout_fps.to_string(),
                MAX_PLAYOUT_FPS.to_string(),
            );
            self.playout_fps = MAX_PLAYOUT_FPS;
        }
        if !(self.min_playout_fps.is_finite() && self.min_playout_fps >= 0.0) {
            let now = defaults.min_playout_fps.min(self.playout_fps);
            note(
                "min_playout_fps",
                self.min_playout_fps.to_string(),
                now.to_string(),
            );
            self.min_playout_fps = now;
        } else if self.min_playout_fps > self.playout_fps {
            note(
                "min_playout_fps",
                self.min_playout_fps.to_string(),
                self.playout_fps.to_string(),
            );
            self.min_playout_fps = self.playout_fps;
        }
        let ahead = self.chunks_ahead.clamp(1, MAX_CHUNKS_AHEAD);
        if ahead != self.chunks_ahead {
            note(
                "chunks_ahead",
                self.chunks_ahead.to_string(),
                ahead.to_string(),
            );
            self.chunks_ahead = ahead;
        }
        if self.max_streams == 0 {
            note("max_streams", "0".into(), "1".into());
            self.max_streams = 1;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let Some(n) = self.intra_threads.filter(|&n| n > 4 * cores) {
            note("intra_threads", n.to_string(), (4 * cores).to_string());
            self.intra_threads = Some(4 * cores);
        }
        changed
    }

    /// The ONNX Runtime configuration these settings describe (GPU budget applied to CUDA).
    pub fn runtime_config(&self) -> RuntimeConfig {
        let providers = self
            .providers
            .iter()
            .cloned()
            .map(|p| match p {
                Provider::Cuda(mut o) if self.gpu_memory_limit.is_some() => {
                    o.memory_limit = self.gpu_memory_limit;
                    Provider::Cuda(o)
                }
                other => other,
            })
            .collect();
        RuntimeConfig {
            providers,
            intra_threads: self.intra_threads,
            verify_hashes: self.verify_hashes,
            ..RuntimeConfig::default()
        }
    }

    /// What the worker loads (resolves the model directory; touches the file system).
    pub fn load_request(&self) -> LoadRequest {
        LoadRequest {
            model_dir: resolve_model_dir(&self.model_dir),
            runtime: self.runtime_config(),
            fast_start: self.fast_start,
        }
    }

    /// Builder: model directory.
    pub fn with_model_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.model_dir = dir.into();
        self
    }

    /// Builder: backend.
    pub fn with_backend(mut self, backend: HeliosBackend) -> Self {
        self.backend = backend;
        self
    }

    /// Seconds one frame stays on screen.
    pub fn frame_duration(&self) -> f64 {
        1.0 / f64::from(self.playout_fps.max(0.1))
    }
}

/// Applies [`HeliosSettings::sanitize`]; the plugin runs it when the resource is added or changed, before
/// anything reads it.
pub(crate) fn sanitize_settings(mut settings: ResMut<HeliosSettings>) {
    let mut fixed = settings.clone();
    let changed = fixed.sanitize();
    if !changed.is_empty() {
        for change in &changed {
            tracing::warn!("helios: {change}");
        }
        *settings = fixed;
    }
}
