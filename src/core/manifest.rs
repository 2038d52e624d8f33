//! `manifest.ron`: everything the runtime must know about an exported model directory.
//!
//! Written by `tools/export` (see `docs/graph-contract.md`); parsed strictly (`deny_unknown_fields`)
//! and checked with [`ModelManifest::validate`] before any graph is loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::limits::{
    self, MAX_STAGES, MAX_STATE_ELEMENTS, MAX_STEPS_PER_STAGE, MAX_TENSOR_ELEMENTS,
    MAX_TEXT_TOKENS, MAX_TRAIN_TIMESTEPS, MAX_VAE_FACTOR,
};
use crate::error::HeliosError;

/// The manifest format this crate reads.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// Element type of a graph input or output, or of a model's compute precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
    /// 64-bit signed integer.
    I64,
    /// 8-bit unsigned integer (decoded RGBA frames of `vae_decoder_rgba8`).
    U8,
    /// 64-bit float (the exact σ inputs of the GPU export's `dmd_step_*` graphs).
    F64,
}

/// One named tensor of a graph's signature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// ONNX input or output name.
    pub name: String,
    /// Static shape.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DType,
}

impl TensorSpec {
    /// Number of elements (saturating; [`ModelManifest::validate`] caps it at
    /// [`MAX_TENSOR_ELEMENTS`]).
    pub fn len(&self) -> usize {
        usize::try_from(limits::elements(&self.shape)).unwrap_or(usize::MAX)
    }

    /// True for a zero-sized tensor.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One ONNX file of the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphSpec {
    /// File name inside the model directory.
    pub file: String,
    /// Lower-case hex SHA-256 of the file (checked on load when `verify_hashes` is on).
    pub sha256: String,
    /// Inputs in order.
    pub inputs: Vec<TensorSpec>,
    /// Outputs in order.
    pub outputs: Vec<TensorSpec>,
}

/// How `HeliosDMDScheduler` shifts sigmas (diffusers 0.42.1 `time_shift_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeShiftType {
    /// `mu / (mu + (1/t - 1)^sigma)`.
    Linear,
    /// `e^mu / (e^mu + (1/t - 1)^sigma)`.
    Exponential,
}

/// `HeliosDMDScheduler` config plus the pipeline's `calculate_shift` constants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Training timesteps (1000).
    pub num_train_timesteps: u32,
    /// Static shift (1.0 for Helios-Distilled).
    pub shift: f64,
    /// Pyramid stages (3).
    pub stages: usize,
    /// Stage boundaries as fractions of the training range, `stages + 1` values.
    pub stage_range: Vec<f64>,
    /// Block-noise correlation and renoise constant γ (1/3).
    pub gamma: f64,
    /// Shift sigmas by μ from the token count.
    pub use_dynamic_shifting: bool,
    /// The shift formula.
    pub time_shift_type: TimeShiftType,
    /// `calculate_shift` base sequence length (256).
    pub base_image_seq_len: f64,
    /// `calculate_shift` max sequence length (4096).
    pub max_image_seq_len: f64,
    /// `calculate_shift` base shift (0.5).
    pub base_shift: f64,
    /// `calculate_shift` max shift (1.15).
    pub max_shift: f64,
}

/// The text side: embedding bank file and its tensor shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingSpec {
    /// safetensors file inside the model directory.
    pub file: String,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Rows per prompt (512 for real Helios: zero-padded T5 output).
    pub seq_len: usize,
    /// Width of a row (4096 for UMT5-XXL).
    pub dim: usize,
}

/// The optional text encoder for free-text prompts (see [`crate::core::text::TextEncoder`]): an ONNX
/// graph `(input_ids, attention_mask) [1, L] int64 -> embedding [1, dim] f32` plus its `tokenizer.json`.
/// Its embedding is the model's one-token prompt, so `embeddings.seq_len` must be 1 and `embeddings.dim`
/// the graph's output width.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextEncoderSpec {
    /// ONNX file inside the model directory.
    pub file: String,
    /// Hugging Face `tokenizer.json` inside the model directory.
    pub tokenizer: String,
    /// SHA-256 of `file`.
    pub sha256: String,
    /// SHA-256 of `tokenizer`.
    pub tokenizer_sha256: String,
    /// Longest token sequence (`[CLS]` and `[SEP]` included); longer texts are cut (128 for all-MiniLM-L6-v2).
    pub max_tokens: usize,
}

/// Parsed `manifest.ron`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    /// Must equal [`MANIFEST_FORMAT_VERSION`].
    pub format_version: u32,
    /// Model name, e.g. `helios-tiny`.
    pub name: String,
    /// How it was made (the export command).
    pub source: String,
    /// diffusers version the graphs were traced from.
    pub diffusers_version: String,
    /// ONNX opset.
    pub opset: u32,
    /// Compute dtype of the reference transformer; the sampler rounds latents to it where diffusers does.
    pub precision: DType,
    /// Pixel height the graphs were exported for.
    pub height: usize,
    /// Pixel width the graphs were exported for.
    pub width: usize,
    /// Latent channels (16).
    pub latent_channels: usize,
    /// Latent frames per chunk (9).
    pub latent_frames_per_chunk: usize,
    /// VAE temporal factor (4).
    pub vae_scale_factor_temporal: usize,
    /// VAE spatial factor (8).
    pub vae_scale_factor_spatial: usize,
    /// History sizes, long to short (16, 2, 1).
    pub history_sizes: Vec<usize>,
    /// Denoising steps per pyramid stage ([2, 2, 2] for Distilled).
    pub pyramid_steps: Vec<usize>,
    /// Double the steps of the first chunk (Distilled: true).
    pub amplify_first_chunk: bool,
    /// Scheduler constants.
    pub scheduler: SchedulerConfig,
    /// Lower-triangular fp32 Cholesky factor of the block-noise covariance, as the reference device
    /// computed it (it differs between CPU and CUDA; see the spec §1.5).
    pub block_noise_cholesky: Vec<Vec<f32>>,
    /// VAE per-channel latent mean.
    pub latents_mean: Vec<f32>,
    /// VAE per-channel latent std.
    pub latents_std: Vec<f32>,
    /// Prompt embedding bank.
    pub embeddings: EmbeddingSpec,
    /// Text encoder for free-text prompts; `None` (absent from the file) limits prompts to the bank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_encoder: Option<TextEncoderSpec>,
    /// Weights several graphs share (the fused GPU export's denoiser stages); `None` (absent from the file)
    /// when every graph carries its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_weights: Option<SharedWeightsSpec>,
    /// ONNX external-data files the graphs read their weights from (`*.onnx.data`), hashed like the graphs;
    /// empty (absent from the file) for models whose graphs carry their weights inline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_data: Vec<DataFileSpec>,
    /// Graphs by key (`denoiser_stage0`, `vae_decoder`, ...).
    pub graphs: BTreeMap<String, GraphSpec>,
}

/// One ONNX external-data file of the model directory (a graph's weights above protobuf's 2 GB limit, or
/// weights several graphs share).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFileSpec {
    /// File name inside the model directory.
    pub file: String,
    /// Lower-case hex SHA-256 of the file (checked on load when `verify_hashes` is on).
    pub sha256: String,
    /// Size in bytes (always checked: a truncated file is named before ONNX Runtime reads it).
    pub bytes: u64,
}

/// A manifest check that failed: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidField {
    /// Dotted path of the field, e.g. `scheduler.stage_range` or `graphs.vae_decoder.outputs.video`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for InvalidField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.field, self.reason)
    }
}

impl std::error::Error for InvalidField {}

impl InvalidField {
    /// The [`HeliosError::ManifestInvalid`] for the manifest at `path`.
    pub fn at(self, path: impl Into<PathBuf>) -> HeliosError {
        HeliosError::ManifestInvalid {
            path: path.into(),
            field: self.field,
            reason: self.reason,
        }
    }
}

/// `Err(InvalidField)` for `field`.
fn bad<T>(field: impl Into<String>, reason: impl Into<String>) -> Result<T, InvalidField> {
    Err(InvalidField {
        field: field.into(),
        reason: reason.into(),
    })
}

/// Elements of `dims` if at most `limit`, else an [`InvalidField`] naming `field`.
fn capped(field: &str, dims: &[usize], limit: u64) -> Result<usize, InvalidField> {
    limits::check_elements(field, dims, limit).map_err(|e| InvalidField {
        field: field.to_string(),
        reason: e.to_string(),
    })
}

/// A declared shape for a message, cut like user text (a damaged manifest may declare thousands of dims).
fn shape_text(shape: &[usize]) -> String {
    crate::error::echo(&format!("{shape:?}"))
}

/// A file name of the manifest: relative, inside the model directory, with an empty or 64-digit hex hash.
fn check_file_entry(field: &str, file: &str, sha256: &str) -> Result<(), InvalidField> {
    let inside = Path::new(file)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if file.is_empty() || !inside {
        return bad(
            format!("{field}.file"),
            format!(
                "`{}` must be a file name inside the model directory",
                crate::error::echo(file)
            ),
        );
    }
    let hex = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
    if !(sha256.is_empty() || hex) {
        return bad(format!("{field}.sha256"), "must be empty or 64 hex digits");
    }
    Ok(())
}

/// One safetensors file whose tensors are initializers (by name) of several graphs, which also refer to its
/// bytes as ONNX external data. GPU providers load it once and give it to each of those graphs' sessions,
/// so the 14B model's 28.6 GB of weights are in device memory once, not once per pyramid stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedWeightsSpec {
    /// safetensors file inside the model directory.
    pub file: String,
    /// SHA-256 of the file (checked on load when `verify_hashes` is on and the file is at most 1 GiB).
    pub sha256: String,
    /// Keys of the graphs that share it.
    pub graphs: Vec<String>,
}

/// Graph keys every model must have.
pub const REQUIRED_GRAPHS: &[&str] = &["vae_decoder"];

impl ModelManifest {
    /// Reads and validates `dir/manifest.ron`.
    pub fn load(dir: &Path) -> Result<Self, HeliosError> {
        let path = dir.join("manifest.ron");
        let text = std::fs::read_to_string(&path).map_err(|source| HeliosError::ModelMissing {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, &path)
    }

    /// Parses and validates manifest text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, HeliosError> {
        let manifest: ModelManifest =
            ron::from_str(text).map_err(|e| HeliosError::ManifestInvalid {
                path: path.to_path_buf(),
                field: "(syntax)".into(),
                reason: crate::error::echo(&e.to_string()),
            })?;
        manifest.validate().map_err(|e| e.at(path))?;
        Ok(manifest)
    }

    /// A short hash of what makes a stream's state fit this model: name, file hashes and the numbers that
    /// shape latents and history. Saved states carry it; restoring one on another model is
    /// [`HeliosError::StateModelMismatch`].
    pub fn model_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut put = |s: &str| {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        put(&self.name);
        put(&format!(
            "{}x{} c{} f{} t{} s{} h{:?} steps{:?} stages{} {:?}",
            self.height,
            self.width,
            self.latent_channels,
            self.latent_frames_per_chunk,
            self.vae_scale_factor_temporal,
            self.vae_scale_factor_spatial,
            self.history_sizes,
            self.pyramid_steps,
            self.scheduler.stages,
            self.precision,
        ));
        put(&self.embeddings.sha256);
        for (key, g) in &self.graphs {
            put(key);
            put(&g.sha256);
        }
        if let Some(t) = &self.text_encoder {
            put(&t.sha256);
            put(&t.tokenizer_sha256);
        }
        if let Some(w) = &self.shared_weights {
            put(&w.sha256);
        }
        for d in &self.external_data {
            put(&d.sha256);
        }
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Key of the denoiser graph for a pyramid stage.
    pub fn denoiser_key(stage: usize) -> String {
        crate::core::graph_contract::key::denoiser(stage)
    }

    /// Latent grid (h, w) at full resolution.
    pub fn latent_hw(&self) -> (usize, usize) {
        let f = self.vae_scale_factor_spatial.max(1);
        (self.height / f, self.width / f)
    }

    /// Latent grid of a pyramid stage (stage `stages-1` is full resolution).
    pub fn stage_hw(&self, stage: usize) -> (usize, usize) {
        let (h, w) = self.latent_hw();
        // halving k times is a shift; past the word size the grid is empty (validate caps stages)
        let k = self
            .scheduler
            .stages
            .saturating_sub(1)
            .saturating_sub(stage);
        let k = u32::try_from(k).unwrap_or(u32::MAX);
        (h.checked_shr(k).unwrap_or(0), w.checked_shr(k).unwrap_or(0))
    }

    /// Pixel frames one chunk decodes to (33).
    pub fn frames_per_chunk(&self) -> usize {
        self.latent_frames_per_chunk
            .saturating_sub(1)
            .saturating_mul(self.vae_scale_factor_temporal)
            .saturating_add(1)
    }

    /// Total history frames (19).
    pub fn history_len(&self) -> usize {
        self.history_sizes
            .iter()
            .fold(0usize, |a, b| a.saturating_add(*b))
    }

    /// Path of a graph's file.
    pub fn graph_path(&self, dir: &Path, key: &str) -> Option<PathBuf> {
        self.graphs.get(key).map(|g| dir.join(&g.file))
    }

    /// Checks internal consistency and the caps of [`crate::core::limits`], naming the field that fails.
    ///
    /// Every number that sizes memory or indexes a buffer is bounded here, and the shapes the graphs declare
    /// are cross-checked against the numbers they follow from (the sessions then check the declared shapes
    /// against the ONNX files), so a bad value fails at load instead of in a chunk.
    pub fn validate(&self) -> Result<(), InvalidField> {
        if self.format_version != MANIFEST_FORMAT_VERSION {
            return bad(
                "format_version",
                format!(
                    "{} is not supported (this crate reads {MANIFEST_FORMAT_VERSION})",
                    self.format_version
                ),
            );
        }
        self.validate_scheduler()?;
        let s = &self.scheduler;
        for (field, v) in [
            ("vae_scale_factor_temporal", self.vae_scale_factor_temporal),
            ("vae_scale_factor_spatial", self.vae_scale_factor_spatial),
        ] {
            if !(1..=MAX_VAE_FACTOR).contains(&v) {
                return bad(field, format!("{v} must be in 1..={MAX_VAE_FACTOR}"));
            }
        }
        if self.latent_channels == 0 || self.latent_frames_per_chunk == 0 {
            return bad(
                if self.latent_channels == 0 {
                    "latent_channels"
                } else {
                    "latent_frames_per_chunk"
                },
                "must be positive",
            );
        }
        // both factors are capped above, so this cannot overflow
        let unit = self.vae_scale_factor_spatial << s.stages;
        let fits = |side: usize| side > 0 && side.is_multiple_of(unit);
        if !(fits(self.height) && fits(self.width)) {
            return bad(
                if fits(self.height) { "width" } else { "height" },
                format!(
                    "resolution {}x{} must be a positive multiple of {unit} for {} pyramid stages",
                    self.height, self.width, s.stages
                ),
            );
        }
        if self.latents_mean.len() != self.latent_channels
            || self.latents_std.len() != self.latent_channels
        {
            return bad(
                "latents_mean",
                format!(
                    "latents_mean/std need {} values, got {}/{}",
                    self.latent_channels,
                    self.latents_mean.len(),
                    self.latents_std.len()
                ),
            );
        }
        if self.latents_mean.iter().any(|v| !v.is_finite()) {
            return bad("latents_mean", "values must be finite");
        }
        if self
            .latents_std
            .iter()
            .any(|v| !(v.is_finite() && *v > 0.0))
        {
            return bad("latents_std", "latents_std must be positive and finite");
        }
        if self.history_sizes.len() != 3
            || self.history_sizes[2] != 1
            || self.history_sizes[0] == 0
            || self.history_sizes[1] == 0
        {
            return bad(
                "history_sizes",
                format!(
                    "{} must be [long, mid, 1] with long, mid > 0 (keep_first_frame layout)",
                    crate::error::echo(&format!("{:?}", self.history_sizes))
                ),
            );
        }
        if self.block_noise_cholesky.len() != 4
            || self.block_noise_cholesky.iter().any(|row| row.len() != 4)
        {
            return bad(
                "block_noise_cholesky",
                "block_noise_cholesky must be a 4x4 matrix",
            );
        }
        // L·Lᵀ is the block-noise covariance, whose diagonal is 1: every row has unit length
        let unit_rows = self.block_noise_cholesky.iter().all(|row| {
            let norm: f64 = row.iter().map(|v| f64::from(*v) * f64::from(*v)).sum();
            (norm - 1.0).abs() < 1e-3
        });
        if !unit_rows {
            return bad(
                "block_noise_cholesky",
                "rows must be finite with unit length (the covariance has a unit diagonal)",
            );
        }
        self.validate_sizes()?;
        if let Some(t) = &self.text_encoder {
            if self.embeddings.seq_len != 1 {
                return bad(
                    "embeddings.seq_len",
                    format!(
                        "a text encoder gives one prompt token, but embeddings.seq_len is {} (must be 1)",
                        self.embeddings.seq_len
                    ),
                );
            }
            if t.file.is_empty() || t.tokenizer.is_empty() {
                return bad(
                    "text_encoder",
                    "text_encoder needs both `file` and `tokenizer`",
                );
            }
            if !(2..=MAX_TEXT_TOKENS).contains(&t.max_tokens) {
                return bad(
                    "text_encoder.max_tokens",
                    format!(
                        "text_encoder.max_tokens {} must be in 2..={MAX_TEXT_TOKENS} ([CLS] and [SEP] count)",
                        t.max_tokens
                    ),
                );
            }
        }
        for key in REQUIRED_GRAPHS {
            if !self.graphs.contains_key(*key) {
                return bad(format!("graphs.{key}"), format!("graph `{key}` is missing"));
            }
        }
        if let Some(w) = &self.shared_weights {
            if w.file.is_empty() || w.graphs.is_empty() {
                return bad(
                    "shared_weights.graphs",
                    "shared_weights needs a `file` and at least one graph",
                );
            }
            if let Some(key) = w.graphs.iter().find(|k| !self.graphs.contains_key(*k)) {
                return bad(
                    "shared_weights.graphs",
                    format!(
                        "shared_weights names graph `{}`, which is missing",
                        crate::error::echo(key)
                    ),
                );
            }
        }
        self.validate_files()?;
        for (key, g) in &self.graphs {
            for (side, specs) in [("inputs", &g.inputs), ("outputs", &g.outputs)] {
                for t in specs {
                    capped(
                        &format!("graphs.{key}.{side}.{}", t.name),
                        &t.shape,
                        MAX_TENSOR_ELEMENTS,
                    )?;
                }
            }
        }
        self.validate_graph_shapes()
    }

    /// Scheduler constants: counts in range, stage boundaries ordered, and a finite schedule.
    fn validate_scheduler(&self) -> Result<(), InvalidField> {
        let s = &self.scheduler;
        if !(2..=MAX_TRAIN_TIMESTEPS).contains(&s.num_train_timesteps) {
            return bad(
                "scheduler.num_train_timesteps",
                format!(
                    "{} must be in 2..={MAX_TRAIN_TIMESTEPS}",
                    s.num_train_timesteps
                ),
            );
        }
        if !(1..=MAX_STAGES).contains(&s.stages) {
            return bad(
                "scheduler.stages",
                format!("{} must be in 1..={MAX_STAGES}", s.stages),
            );
        }
        if s.stage_range.len() != s.stages + 1 {
            return bad(
                "scheduler.stage_range",
                format!(
                    "scheduler.stage_range has {} values for {} stages",
                    s.stage_range.len(),
                    s.stages
                ),
            );
        }
        let ordered = s.stage_range.windows(2).all(|p| p[0] < p[1]);
        let in_unit = s.stage_range.iter().all(|v| (0.0..=1.0).contains(v));
        if !(ordered && in_unit) {
            return bad(
                "scheduler.stage_range",
                format!("{:?} must rise strictly within [0, 1]", s.stage_range),
            );
        }
        if self.pyramid_steps.len() != s.stages
            || self
                .pyramid_steps
                .iter()
                .any(|n| !(1..=MAX_STEPS_PER_STAGE).contains(n))
        {
            return bad(
                "pyramid_steps",
                format!(
                    "pyramid_steps {} must have one count in 1..={MAX_STEPS_PER_STAGE} per stage ({})",
                    crate::error::echo(&format!("{:?}", self.pyramid_steps)),
                    s.stages
                ),
            );
        }
        if !(s.gamma > 0.0 && s.gamma.is_finite()) {
            return bad(
                "scheduler.gamma",
                format!("scheduler.gamma {} must be positive", s.gamma),
            );
        }
        if !(s.shift > 0.0 && s.shift.is_finite()) {
            return bad(
                "scheduler.shift",
                format!("{} must be positive and finite", s.shift),
            );
        }
        if s.use_dynamic_shifting && s.shift != 1.0 {
            return bad(
                "scheduler.shift",
                "dynamic shifting requires shift = 1.0 (as diffusers asserts)",
            );
        }
        for (field, v) in [
            ("scheduler.base_image_seq_len", s.base_image_seq_len),
            ("scheduler.max_image_seq_len", s.max_image_seq_len),
            ("scheduler.base_shift", s.base_shift),
            ("scheduler.max_shift", s.max_shift),
        ] {
            if !v.is_finite() {
                return bad(field, format!("{v} must be finite"));
            }
        }
        if s.max_image_seq_len == s.base_image_seq_len {
            return bad(
                "scheduler.max_image_seq_len",
                "must differ from base_image_seq_len (calculate_shift divides by the difference)",
            );
        }
        Ok(())
    }

    /// Element counts of the tensors and state the numbers imply, with checked arithmetic.
    fn validate_sizes(&self) -> Result<(), InvalidField> {
        let (c, f) = (self.latent_channels, self.latent_frames_per_chunk);
        let (h, w) = self.latent_hw();
        capped(
            "latent_frames_per_chunk",
            &[c, f, h, w],
            MAX_TENSOR_ELEMENTS,
        )?;
        let frames = f
            .checked_sub(1)
            .and_then(|n| n.checked_mul(self.vae_scale_factor_temporal))
            .and_then(|n| n.checked_add(1))
            .unwrap_or(usize::MAX);
        capped(
            "vae_scale_factor_temporal",
            &[frames, 4, self.height, self.width],
            MAX_TENSOR_ELEMENTS,
        )?;
        // the history ring plus the anchor frame
        let ring = self
            .history_sizes
            .iter()
            .try_fold(1usize, |a, b| a.checked_add(*b))
            .unwrap_or(usize::MAX);
        capped("history_sizes", &[ring, c, h, w], MAX_STATE_ELEMENTS)?;
        let e = &self.embeddings;
        if e.seq_len == 0 || e.dim == 0 {
            return bad("embeddings.seq_len", "seq_len and dim must be positive");
        }
        capped("embeddings.dim", &[e.seq_len, e.dim], MAX_TENSOR_ELEMENTS)?;
        Ok(())
    }

    /// File names stay inside the model directory; hashes are empty or hex.
    fn validate_files(&self) -> Result<(), InvalidField> {
        check_file_entry("embeddings", &self.embeddings.file, &self.embeddings.sha256)?;
        if let Some(t) = &self.text_encoder {
            check_file_entry("text_encoder", &t.file, &t.sha256)?;
            check_file_entry("text_encoder.tokenizer", &t.tokenizer, &t.tokenizer_sha256)?;
        }
        if let Some(w) = &self.shared_weights {
            check_file_entry("shared_weights", &w.file, &w.sha256)?;
        }
        for (i, d) in self.external_data.iter().enumerate() {
            check_file_entry(&format!("external_data[{i}]"), &d.file, &d.sha256)?;
        }
        for (key, g) in &self.graphs {
            check_file_entry(&format!("graphs.{key}"), &g.file, &g.sha256)?;
        }
        Ok(())
    }

    /// The shapes the denoiser and decoder graphs declare against the numbers they follow from, and the
    /// schedule those numbers give.
    fn validate_graph_shapes(&self) -> Result<(), InvalidField> {
        let s = &self.scheduler;
        let c = self.latent_channels;
        let (h, w) = self.latent_hw();
        let [long, mid, _] = [
            self.history_sizes[0],
            self.history_sizes[1],
            self.history_sizes[2],
        ];
        for stage in 0..s.stages {
            let key = Self::denoiser_key(stage);
            let Some(g) = self.graphs.get(&key) else {
                return bad(format!("graphs.{key}"), format!("graph `{key}` is missing"));
            };
            let (hs, ws) = self.stage_hw(stage);
            let want = [1, c, self.latent_frames_per_chunk, hs, ws];
            match g.inputs.iter().find(|t| t.name == "hidden_states") {
                Some(t) if t.shape == want => {}
                Some(t) => {
                    return bad(
                        format!("graphs.{key}.inputs.hidden_states"),
                        format!(
                            "`{key}` hidden_states shape {}, expected {want:?} from latent_channels, \
                             latent_frames_per_chunk, height/width and the stage",
                            shape_text(&t.shape)
                        ),
                    );
                }
                None => {
                    return bad(
                        format!("graphs.{key}.inputs"),
                        format!("`{key}` has no input `hidden_states`"),
                    );
                }
            }
            match g.inputs.iter().find(|t| t.name == "encoder_hidden_states") {
                Some(t) if t.shape == [1, self.embeddings.seq_len, self.embeddings.dim] => {}
                Some(t) => {
                    return bad(
                        format!("graphs.{key}.inputs.encoder_hidden_states"),
                        format!(
                            "`{key}` encoder_hidden_states shape {} disagrees with embeddings [1, {}, {}]",
                            shape_text(&t.shape),
                            self.embeddings.seq_len,
                            self.embeddings.dim
                        ),
                    );
                }
                None => {
                    return bad(
                        format!("graphs.{key}.inputs"),
                        format!("`{key}` has no input `encoder_hidden_states`"),
                    );
                }
            }
            // Optional names: the sessions check that the graph has them.
            let declared = [
                ("inputs", "latents_history_short", vec![1, c, 2, h, w]),
                ("inputs", "latents_history_mid", vec![1, c, mid, h, w]),
                ("inputs", "latents_history_long", vec![1, c, long, h, w]),
                ("outputs", "velocity", want.to_vec()),
            ];
            for (side, name, want) in declared {
                let specs = if side == "inputs" {
                    &g.inputs
                } else {
                    &g.outputs
                };
                if let Some(t) = specs.iter().find(|t| t.name == name)
                    && t.shape != want
                {
                    return bad(
                        format!("graphs.{key}.{side}.{name}"),
                        format!(
                            "shape {}, expected {want:?} from latent_channels, height/width and history_sizes",
                            shape_text(&t.shape)
                        ),
                    );
                }
            }
        }
        if let Some(g) = self.graphs.get("vae_decoder") {
            let checks = [
                (
                    "inputs",
                    &g.inputs,
                    "latents",
                    vec![1, c, self.latent_frames_per_chunk, h, w],
                ),
                (
                    "outputs",
                    &g.outputs,
                    "video",
                    vec![1, 3, self.frames_per_chunk(), self.height, self.width],
                ),
            ];
            for (side, specs, name, want) in checks {
                if let Some(t) = specs.iter().find(|t| t.name == name)
                    && t.shape != want
                {
                    return bad(
                        format!("graphs.vae_decoder.{side}.{name}"),
                        format!(
                            "shape {}, expected {want:?} from latent_frames_per_chunk, \
                             vae_scale_factor_temporal and height/width",
                            shape_text(&t.shape)
                        ),
                    );
                }
            }
        }
        // The schedule every chunk will use must be finite with σ in [0, 1].
        let sampler = crate::core::sampler::Sampler::new(
            self,
            crate::core::sampler::SamplerOptions {
                amplify_first_chunk: true,
            },
        );
        for amplify in [false, true] {
            for (stage, sched) in sampler.stage_schedules(amplify).iter().enumerate() {
                let finite = sched.timesteps.iter().all(|t| t.is_finite() && *t >= 0.0)
                    && sched.sigmas.iter().all(|v| (0.0..=1.0).contains(v));
                if !finite || !sched.mu.is_finite() {
                    return bad(
                        "scheduler",
                        format!(
                            "stage {stage} gets a schedule outside [0, 1] (μ = {}); check shift, \
                             base_shift/max_shift and base/max_image_seq_len",
                            sched.mu
                        ),
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A manifest shaped like helios-tiny (64x64), for unit tests that need no files.
    pub(crate) fn tiny() -> ModelManifest {
        let t = |name: &str, shape: &[usize]| TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
            dtype: DType::F32,
        };
        let mut graphs = BTreeMap::new();
        for (s, hw) in [2usize, 4, 8].into_iter().enumerate() {
            graphs.insert(
                ModelManifest::denoiser_key(s),
                GraphSpec {
                    file: format!("denoiser_stage{s}.onnx"),
                    sha256: String::new(),
                    inputs: vec![
                        t("hidden_states", &[1, 16, 9, hw, hw]),
                        t("encoder_hidden_states", &[1, 16, 32]),
                    ],
                    outputs: vec![t("velocity", &[1, 16, 9, hw, hw])],
                },
            );
        }
        graphs.insert(
            "vae_decoder".into(),
            GraphSpec {
                file: "vae_decoder.onnx".into(),
                sha256: String::new(),
                inputs: vec![t("latents", &[1, 16, 9, 8, 8])],
                outputs: vec![t("video", &[1, 3, 33, 64, 64])],
            },
        );
        ModelManifest {
            format_version: MANIFEST_FORMAT_VERSION,
            name: "unit".into(),
            source: "unit test".into(),
            diffusers_version: "0.42.1".into(),
            opset: 18,
            precision: DType::F32,
            height: 64,
            width: 64,
            latent_channels: 16,
            latent_frames_per_chunk: 9,
            vae_scale_factor_temporal: 4,
            vae_scale_factor_spatial: 8,
            history_sizes: vec![16, 2, 1],
            pyramid_steps: vec![2, 2, 2],
            amplify_first_chunk: true,
            scheduler: SchedulerConfig {
                num_train_timesteps: 1000,
                shift: 1.0,
                stages: 3,
                stage_range: vec![0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0],
                gamma: 1.0 / 3.0,
                use_dynamic_shifting: true,
                time_shift_type: TimeShiftType::Linear,
                base_image_seq_len: 256.0,
                max_image_seq_len: 4096.0,
                base_shift: 0.5,
                max_shift: 1.15,
            },
            block_noise_cholesky: crate::core::sampler::noise::CPU_BLOCK_NOISE_CHOLESKY
                .iter()
                .map(|r| r.to_vec())
                .collect(),
            latents_mean: vec![0.0; 16],
            latents_std: vec![1.0; 16],
            embeddings: EmbeddingSpec {
                file: "embeddings.safetensors".into(),
                sha256: String::new(),
                seq_len: 16,
                dim: 32,
            },
            text_encoder: None,
            shared_weights: None,
            external_data: Vec::new(),
            graphs,
        }
    }

    #[test]
    fn tiny_validates_and_roundtrips() {
        let m = tiny();
        m.validate()
            .expect("a tiny-shaped manifest should validate");
        let text = ron::ser::to_string_pretty(&m, Default::default()).unwrap();
        let back: ModelManifest = ron::from_str(&text).unwrap();
        assert_eq!(back, m, "manifest should survive a RON round trip");
        assert_eq!(m.stage_hw(0), (2, 2));
        assert_eq!(m.stage_hw(2), (8, 8));
        assert_eq!(m.frames_per_chunk(), 33);
    }

    #[test]
    fn validate_rejects_inconsistent_manifests() {
        let mut m = tiny();
        m.pyramid_steps = vec![2, 2];
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("pyramid_steps")
        );
        let mut m = tiny();
        m.height = 72;
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("multiple of 64")
        );
        let mut m = tiny();
        m.embeddings.dim = 48;
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("disagrees with embeddings")
        );
        let mut m = tiny();
        m.graphs.remove("denoiser_stage1");
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("denoiser_stage1")
        );
    }

    fn encoder_spec() -> TextEncoderSpec {
        TextEncoderSpec {
            file: "text_encoder.onnx".into(),
            tokenizer: "tokenizer.json".into(),
            sha256: String::new(),
            tokenizer_sha256: String::new(),
            max_tokens: 128,
        }
    }

    /// `tiny()` with a one-token prompt of width 16 and a text encoder.
    pub(crate) fn tiny_with_text_encoder() -> ModelManifest {
        let mut m = tiny();
        m.embeddings.seq_len = 1;
        m.embeddings.dim = 16;
        for g in m.graphs.values_mut() {
            for t in &mut g.inputs {
                if t.name == "encoder_hidden_states" {
                    t.shape = vec![1, 1, 16];
                }
            }
        }
        m.text_encoder = Some(encoder_spec());
        m
    }

    #[test]
    fn text_encoder_is_optional_and_roundtrips() {
        // A manifest written before text encoders existed has no such field.
        let text = ron::ser::to_string_pretty(&tiny(), Default::default()).unwrap();
        assert!(
            !text.contains("text_encoder"),
            "None should not be written, so old readers still parse new manifests without one"
        );
        let back: ModelManifest = ron::from_str(&text).unwrap();
        assert_eq!(back.text_encoder, None);
        let m = tiny_with_text_encoder();
        m.validate()
            .expect("a one-token manifest with a text encoder should validate");
        let text = ron::ser::to_string_pretty(&m, Default::default()).unwrap();
        assert!(text.contains("text_encoder: Some(("), "{text}");
        let back: ModelManifest = ron::from_str(&text).unwrap();
        assert_eq!(back, m, "text_encoder should survive a RON round trip");
    }

    #[test]
    fn shared_weights_are_optional_roundtrip_and_name_known_graphs() {
        let mut m = tiny();
        assert!(!ron::to_string(&m).unwrap().contains("shared_weights"));
        m.shared_weights = Some(SharedWeightsSpec {
            file: "denoiser_weights.safetensors".into(),
            sha256: String::new(),
            graphs: vec!["denoiser_stage0".into(), "denoiser_stage2".into()],
        });
        m.validate().expect("graphs that exist may share weights");
        let back: ModelManifest = ron::from_str(&ron::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m, "shared_weights should survive a RON round trip");
        m.shared_weights
            .as_mut()
            .unwrap()
            .graphs
            .push("denoiser_stage9".into());
        let err = m.validate().unwrap_err().to_string();
        assert!(err.contains("denoiser_stage9"), "{err}");
    }

    #[test]
    fn text_encoder_needs_one_token_prompts() {
        let mut m = tiny();
        m.text_encoder = Some(encoder_spec());
        let err = m.validate().unwrap_err().to_string();
        assert!(
            err.contains("embeddings.seq_len is 16 (must be 1)"),
            "a 16-row bank cannot take one-token text embeddings: {err}"
        );
        let mut m = tiny_with_text_encoder();
        m.text_encoder.as_mut().unwrap().max_tokens = 1;
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("max_tokens 1")
        );
        let mut m = tiny_with_text_encoder();
        m.text_encoder.as_mut().unwrap().tokenizer.clear();
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("`tokenizer`")
        );
    }
}
