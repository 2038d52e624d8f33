//! What the worker thread runs: the [`HeliosGenerator`] trait over a loaded model, the
//! [`HeliosBackend`] factory that loads one (ONNX Runtime by default), and [`PatternNetworks`], cheap
//! synthetic networks that run the real sampler without ONNX Runtime (tests, benches, `--pattern`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{Array5, Axis};

use crate::core::embedding::{EmbeddingBank, PromptWeights};
use crate::core::manifest::ModelManifest;
use crate::core::model::HeliosModel;
use crate::core::runtime::{OrtModel, ProviderReport, RuntimeConfig};
use crate::core::sampler::{Decoder, Denoiser, DenoiserInput, SamplerOptions};
use crate::core::stream::{Chunk, GenerationState, StreamConfig};
use crate::error::HeliosError;

/// Facts about the loaded model that the ECS side needs (sizes, prompt names, provider).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// Model name from the manifest.
    pub name: String,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Frames per generated chunk (33 for Helios).
    pub frames_per_chunk: usize,
    /// Prompt names of the embedding bank, sorted.
    pub prompts: Vec<String>,
    /// Whether the model has a text encoder, so prompt keys outside the bank are embedded as free text.
    pub free_text: bool,
    /// The execution provider in use and the ones skipped.
    pub provider: ProviderReport,
}

/// A loaded model as the worker thread drives it. Implemented for `HeliosModel<OrtModel>` (the real
/// thing) and `HeliosModel<PatternNetworks>`; implement it for your own networks to plug them in.
pub trait HeliosGenerator: Send {
    /// Sizes, prompt names and provider.
    fn info(&self) -> ModelInfo;
    /// Opens a fresh stream.
    fn new_stream(&mut self, config: &StreamConfig) -> Result<GenerationState, HeliosError>;
    /// Checks prompt weights against the bank, or the text encoder for free text (so a bad name fails
    /// at `set_prompt`, not later).
    fn check_prompt(&self, weights: &PromptWeights) -> Result<(), HeliosError>;
    /// Generates the next chunk, advancing `state` only on success.
    fn next_chunk(&mut self, state: &mut GenerationState) -> Result<Chunk, HeliosError>;
    /// Image-to-video conditioning; the default says the backend cannot do it.
    fn condition_on_image(
        &mut self,
        _state: &mut GenerationState,
        _rgba: &[u8],
        _width: u32,
        _height: u32,
    ) -> Result<(), HeliosError> {
        Err(no_image_conditioning())
    }
    /// Fast start: skip the doubled step count of a stream's first chunk.
    fn set_fast_start(&mut self, fast_start: bool);
}

/// Networks a [`HeliosModel`] can drive inside the worker: what differs between ONNX Runtime and the
/// synthetic pattern networks, so one [`HeliosGenerator`] impl serves both.
pub trait GeneratorNetworks: Denoiser + Decoder + Send + Sized {
    /// The provider report shown in status and the inspector.
    fn provider(model: &HeliosModel<Self>) -> ProviderReport;
    /// Image-to-video conditioning; the default says these networks cannot do it.
    fn condition_on_image(
        _model: &mut HeliosModel<Self>,
        _state: &mut GenerationState,
        _rgba: &[u8],
        _width: u32,
        _height: u32,
    ) -> Result<(), HeliosError> {
        Err(no_image_conditioning())
    }
}

fn no_image_conditioning() -> HeliosError {
    HeliosError::Unsupported {
        what: "image conditioning: this backend has none".into(),
    }
}

impl GeneratorNetworks for OrtModel {
    fn provider(model: &HeliosModel<Self>) -> ProviderReport {
        model.provider().clone()
    }
    fn condition_on_image(
        model: &mut HeliosModel<Self>,
        state: &mut GenerationState,
        rgba: &[u8],
        width: u32,
        height: u32,
    ) -> Result<(), HeliosError> {
        // the inherent I2V path of the ONNX model (inherent methods take precedence over this trait)
        HeliosModel::condition_on_image(model, state, rgba, width, height)
    }
}

impl GeneratorNetworks for PatternNetworks {
    fn provider(_model: &HeliosModel<Self>) -> ProviderReport {
        ProviderReport {
            active: "pattern (no ONNX Runtime)".into(),
            skipped: Vec::new(),
        }
    }
}

impl<N: GeneratorNetworks> HeliosGenerator for HeliosModel<N> {
    fn info(&self) -> ModelInfo {
        let m = self.manifest();
        ModelInfo {
            name: m.name.clone(),
            width: m.width as u32,
            height: m.height as u32,
            frames_per_chunk: m.frames_per_chunk(),
            prompts: self.bank().names().map(str::to_string).collect(),
            free_text: self.text_encoder().is_some(),
            provider: N::provider(self),
        }
    }
    fn new_stream(&mut self, config: &StreamConfig) -> Result<GenerationState, HeliosError> {
        HeliosModel::new_stream(self, config)
    }
    fn check_prompt(&self, weights: &PromptWeights) -> Result<(), HeliosError> {
        HeliosModel::check_prompt(self, weights)
    }
    fn next_chunk(&mut self, state: &mut GenerationState) -> Result<Chunk, HeliosError> {
        HeliosModel::next_chunk(self, state)
    }
    fn condition_on_image(
        &mut self,
        state: &mut GenerationState,
        rgba: &[u8],
        width: u32,
        height: u32,
    ) -> Result<(), HeliosError> {
        N::condition_on_image(self, state, rgba, width, height)
    }
    fn set_fast_start(&mut self, fast_start: bool) {
        let amplify_first_chunk = self.manifest().amplify_first_chunk && !fast_start;
        self.set_sampler_options(SamplerOptions {
            amplify_first_chunk,
        });
    }
}

/// What the worker asks a backend to load.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadRequest {
    /// The model directory, already resolved (see [`resolve_model_dir`]).
    pub model_dir: PathBuf,
    /// Providers, threads, hash checks.
    pub runtime: RuntimeConfig,
    /// Fast start (first chunk not amplified).
    pub fast_start: bool,
}

/// Reports a loading stage and its progress in 0..=1 (sent to [`crate::status::HeliosStatus`]).
pub type LoadProgress<'a> = &'a mut dyn FnMut(&str, f32);

type Factory = dyn Fn(&LoadRequest, LoadProgress<'_>) -> Result<Box<dyn HeliosGenerator>, HeliosError>
    + Send
    + Sync;

/// Loads a [`HeliosGenerator`] on the worker thread. Cloned into the thread; called again to restart
/// after a crash. The default is [`HeliosBackend::onnx`].
#[derive(Clone)]
pub struct HeliosBackend {
    name: &'static str,
    factory: Arc<Factory>,
}

impl fmt::Debug for HeliosBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeliosBackend")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Default for HeliosBackend {
    fn default() -> Self {
        Self::onnx()
    }
}

impl HeliosBackend {
    /// The exported model through ONNX Runtime, on the first provider of the configured chain that works.
    pub fn onnx() -> Self {
        Self::custom("onnx", |req, progress| {
            // The manifest first: a missing model is reported without touching ONNX Runtime.
            progress("reading manifest", 0.02);
            ModelManifest::load(&req.model_dir)?;
            progress("locating ONNX Runtime", 0.05);
            crate::core::runtime::environment()?;
            progress("opening graphs", 0.3);
            let mut model = HeliosModel::load(&req.model_dir, &req.runtime)?;
            HeliosGenerator::set_fast_start(&mut model, req.fast_start);
            progress("ready", 1.0);
            Ok(Box::new(model))
        })
    }

    /// The real manifest, embedding bank and sampler with [`PatternNetworks`] instead of the ONNX
    /// graphs: no ONNX Runtime, a chunk in milliseconds, frames that depend on prompt and seed.
    /// It has no text encoder (that needs ONNX Runtime), so prompts are limited to the bank.
    pub fn pattern() -> Self {
        Self::custom("pattern", |req, progress| {
            progress("reading manifest", 0.2);
            let manifest = ModelManifest::load(&req.model_dir)?;
            progress("reading embeddings", 0.6);
            let bank = EmbeddingBank::load(
                &req.model_dir.join(&manifest.embeddings.file),
                manifest.embeddings.seq_len,
                manifest.embeddings.dim,
            )?;
            let nets = PatternNetworks::new(&manifest);
            let mut model = HeliosModel::with_networks(manifest, bank, nets);
            HeliosGenerator::set_fast_start(&mut model, req.fast_start);
            Ok(Box::new(model))
        })
    }

    /// Any loader: `factory(request, progress)` runs on the worker thread.
    pub fn custom(
        name: &'static str,
        factory: impl Fn(
            &LoadRequest,
            LoadProgress<'_>,
        ) -> Result<Box<dyn HeliosGenerator>, HeliosError>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self {
            name,
            factory: Arc::new(factory),
        }
    }

    /// The backend's name (`onnx`, `pattern`, or the custom name).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Loads a generator (called on the worker thread).
    pub fn load(
        &self,
        request: &LoadRequest,
        progress: LoadProgress<'_>,
    ) -> Result<Box<dyn HeliosGenerator>, HeliosError> {
        (self.factory)(request, progress)
    }
}

/// Resolves a model directory (or any data directory) to an absolute path: absolute paths are kept,
/// then the working directory is tried; otherwise the directory of the executable (and its parents up to three levels, for
/// `target/debug/examples`) and this crate's source directory are tried. Falls back to `dir` as given,
/// so the load error names the path the user wrote.
pub fn resolve_model_dir(dir: &Path) -> PathBuf {
    if dir.is_absolute() {
        return dir.to_path_buf();
    }
    if dir.exists() {
        return std::env::current_dir().map_or_else(|_| dir.to_path_buf(), |cwd| cwd.join(dir));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().skip(1).take(4).map(|a| a.join(dir)));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir));
    candidates
        .into_iter()
        .find(|c| c.exists())
        .unwrap_or_else(|| dir.to_path_buf())
}

/// Synthetic networks for tests and benches: the velocity pulls the sample towards a smooth field whose
/// phase comes from the prompt embedding, and the decoder turns latents into colour bands, so frames
/// depend on the prompt, the seed and the history, and cost microseconds.
#[derive(Clone, Debug)]
pub struct PatternNetworks {
    frames: usize,
    height: usize,
    width: usize,
}

impl PatternNetworks {
    /// Networks shaped for `manifest`.
    pub fn new(manifest: &ModelManifest) -> Self {
        Self {
            frames: manifest.frames_per_chunk(),
            height: manifest.height,
            width: manifest.width,
        }
    }
}

impl Denoiser for PatternNetworks {
    fn velocity(&mut self, input: &DenoiserInput<'_>) -> Result<Array5<f32>, HeliosError> {
        let text = input.text;
        let n = text.len().max(1) as f32;
        // Two numbers per prompt: the mean and the mean of the first row, enough to tell prompts apart.
        let phase = text.iter().sum::<f32>() / n * 40.0;
        let tilt = text.index_axis(Axis(1), 0).iter().sum::<f32>() * 3.0;
        let history = input.history.short.mean().unwrap_or(0.0);
        let t = input.timestep as f32 / 1000.0;
        let sample = input.sample;
        Ok(Array5::from_shape_fn(
            sample.raw_dim(),
            |(_, c, f, y, x)| {
                let target =
                    (phase + c as f32 * 0.7 + tilt * (y as f32 - x as f32) * 0.1 + f as f32 * 0.3)
                        .sin()
                        + 0.3 * history;
                (sample[[0, c, f, y, x]] - target) * (0.5 + t)
            },
        ))
    }
}

impl Decoder for PatternNetworks {
    fn decode(&mut self, latents: &Array5<f32>) -> Result<Array5<f32>, HeliosError> {
        let (_, c, t, h, w) = latents.dim();
        let (frames, height, width) = (self.frames, self.height, self.width);
        Ok(Array5::from_shape_fn(
            (1, 3, frames, height, width),
            |(_, rgb, f, y, x)| {
                let lt = (f * t / frames).min(t - 1);
                let ly = (y * h / height).min(h - 1);
                let lx = (x * w / width).min(w - 1);
                let v = latents[[0, (rgb * 5) % c, lt, ly, lx]];
                let wave = ((x + y) as f32 * 0.15 + f as f32 * 0.2 + rgb as f32 * 2.0).sin() * 0.25;
                (v * 0.5 + wave).tanh()
            },
        ))
    }
}
