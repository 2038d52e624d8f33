//! `manifest.ron`: everything the runtime must know about an exported model directory.
//!
//! Written by `tools/export` (see `docs/graph-contract.md`); parsed strictly (`deny_unknown_fields`)
//! and checked with [`ModelManifest::validate`] before any graph is loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
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
    /// Longest token sequence ([CLS] and [SEP] included); longer texts are cut (128 for all-MiniLM-L6-v2).
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
    /// Graphs by key (`denoiser_stage0`, `vae_decoder`, ...).
    pub graphs: BTreeMap<String, GraphSpec>,
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
        let manifest: ModelManifest =
            ron::from_str(&text).map_err(|e| HeliosError::ManifestInvalid {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        manifest
            .validate()
            .map_err(|reason| HeliosError::ManifestInvalid { path, reason })?;
        Ok(manifest)
    }

    /// Key of the denoiser graph for a pyramid stage.
    pub fn denoiser_key(stage: usize) -> String {
        format!("denoiser_stage{stage}")
    }

    /// Latent grid (h, w) at full resolution.
    pub fn latent_hw(&self) -> (usize, usize) {
        (
            self.height / self.vae_scale_factor_spatial,
            self.width / self.vae_scale_factor_spatial,
        )
    }

    /// Latent grid of a pyramid stage (stage `stages-1` is full resolution).
    pub fn stage_hw(&self, stage: usize) -> (usize, usize) {
        let (h, w) = self.latent_hw();
        let down = 1usize << (self.scheduler.stages - 1 - stage);
        (h / down, w / down)
    }

    /// Pixel frames one chunk decodes to (33).
    pub fn frames_per_chunk(&self) -> usize {
        (self.latent_frames_per_chunk - 1) * self.vae_scale_factor_temporal + 1
    }

    /// Total history frames (19).
    pub fn history_len(&self) -> usize {
        self.history_sizes.iter().sum()
    }

    /// Path of a graph's file.
    pub fn graph_path(&self, dir: &Path, key: &str) -> Option<PathBuf> {
        self.graphs.get(key).map(|g| dir.join(&g.file))
    }

    /// Checks internal consistency; returns a human-readable reason on failure.
    pub fn validate(&self) -> Result<(), String> {
        if self.format_version != MANIFEST_FORMAT_VERSION {
            return Err(format!(
                "format_version {} is not supported (this crate reads {MANIFEST_FORMAT_VERSION})",
                self.format_version
            ));
        }
        let s = &self.scheduler;
        if s.stages == 0 || s.stage_range.len() != s.stages + 1 {
            return Err(format!(
                "scheduler.stage_range has {} values for {} stages",
                s.stage_range.len(),
                s.stages
            ));
        }
        if self.pyramid_steps.len() != s.stages || self.pyramid_steps.contains(&0) {
            return Err(format!(
                "pyramid_steps {:?} must have one non-zero count per stage ({})",
                self.pyramid_steps, s.stages
            ));
        }
        if !(s.gamma > 0.0 && s.gamma.is_finite()) {
            return Err(format!("scheduler.gamma {} must be positive", s.gamma));
        }
        if s.use_dynamic_shifting && s.shift != 1.0 {
            return Err("dynamic shifting requires shift = 1.0 (as diffusers asserts)".into());
        }
        let unit = self.vae_scale_factor_spatial << s.stages;
        if self.height == 0
            || self.width == 0
            || !self.height.is_multiple_of(unit)
            || !self.width.is_multiple_of(unit)
        {
            return Err(format!(
                "resolution {}x{} must be a positive multiple of {unit} for {} pyramid stages",
                self.height, self.width, s.stages
            ));
        }
        if self.latents_mean.len() != self.latent_channels
            || self.latents_std.len() != self.latent_channels
        {
            return Err(format!(
                "latents_mean/std need {} values, got {}/{}",
                self.latent_channels,
                self.latents_mean.len(),
                self.latents_std.len()
            ));
        }
        if self
            .latents_std
            .iter()
            .any(|v| v.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater))
        {
            return Err("latents_std must be positive".into());
        }
        if self.history_sizes.len() != 3 || self.history_sizes[2] != 1 {
            return Err(format!(
                "history_sizes {:?} must be [long, mid, 1] (keep_first_frame layout)",
                self.history_sizes
            ));
        }
        if self.block_noise_cholesky.len() != 4
            || self.block_noise_cholesky.iter().any(|row| row.len() != 4)
        {
            return Err("block_noise_cholesky must be a 4x4 matrix".into());
        }
        if let Some(t) = &self.text_encoder {
            if self.embeddings.seq_len != 1 {
                return Err(format!(
                    "a text encoder gives one prompt token, but embeddings.seq_len is {} (must be 1)",
                    self.embeddings.seq_len
                ));
            }
            if t.file.is_empty() || t.tokenizer.is_empty() {
                return Err("text_encoder needs both `file` and `tokenizer`".into());
            }
            if t.max_tokens < 2 {
                return Err(format!(
                    "text_encoder.max_tokens {} leaves no room for a word ([CLS] and [SEP] count)",
                    t.max_tokens
                ));
            }
        }
        for key in REQUIRED_GRAPHS {
            if !self.graphs.contains_key(*key) {
                return Err(format!("graph `{key}` is missing"));
            }
        }
        if let Some(w) = &self.shared_weights {
            if w.file.is_empty() || w.graphs.is_empty() {
                return Err("shared_weights needs a `file` and at least one graph".into());
            }
            if let Some(key) = w.graphs.iter().find(|k| !self.graphs.contains_key(*k)) {
                return Err(format!(
                    "shared_weights names graph `{key}`, which is missing"
                ));
            }
        }
        for stage in 0..s.stages {
            let key = Self::denoiser_key(stage);
            let Some(g) = self.graphs.get(&key) else {
                return Err(format!("graph `{key}` is missing"));
            };
            let (hs, ws) = self.stage_hw(stage);
            let want = [
                1,
                self.latent_channels,
                self.latent_frames_per_chunk,
                hs,
                ws,
            ];
            match g.inputs.iter().find(|t| t.name == "hidden_states") {
                Some(t) if t.shape == want => {}
                Some(t) => {
                    return Err(format!(
                        "`{key}` hidden_states shape {:?}, expected {want:?}",
                        t.shape
                    ));
                }
                None => return Err(format!("`{key}` has no input `hidden_states`")),
            }
            match g.inputs.iter().find(|t| t.name == "encoder_hidden_states") {
                Some(t) if t.shape == [1, self.embeddings.seq_len, self.embeddings.dim] => {}
                Some(t) => {
                    return Err(format!(
                        "`{key}` encoder_hidden_states shape {:?} disagrees with embeddings [1, {}, {}]",
                        t.shape, self.embeddings.seq_len, self.embeddings.dim
                    ));
                }
                None => return Err(format!("`{key}` has no input `encoder_hidden_states`")),
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
        assert!(m.validate().unwrap_err().contains("pyramid_steps"));
        let mut m = tiny();
        m.height = 72;
        assert!(m.validate().unwrap_err().contains("multiple of 64"));
        let mut m = tiny();
        m.embeddings.dim = 48;
        assert!(
            m.validate()
                .unwrap_err()
                .contains("disagrees with embeddings")
        );
        let mut m = tiny();
        m.graphs.remove("denoiser_stage1");
        assert!(m.validate().unwrap_err().contains("denoiser_stage1"));
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
        let err = m.validate().unwrap_err();
        assert!(err.contains("denoiser_stage9"), "{err}");
    }

    #[test]
    fn text_encoder_needs_one_token_prompts() {
        let mut m = tiny();
        m.text_encoder = Some(encoder_spec());
        let err = m.validate().unwrap_err();
        assert!(
            err.contains("embeddings.seq_len is 16 (must be 1)"),
            "a 16-row bank cannot take one-token text embeddings: {err}"
        );
        let mut m = tiny_with_text_encoder();
        m.text_encoder.as_mut().unwrap().max_tokens = 1;
        assert!(m.validate().unwrap_err().contains("max_tokens 1"));
        let mut m = tiny_with_text_encoder();
        m.text_encoder.as_mut().unwrap().tokenizer.clear();
        assert!(m.validate().unwrap_err().contains("`tokenizer`"));
    }
}
