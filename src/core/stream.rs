//! A generation stream's identity, its serializable state, and the chunks it produces.

use serde::{Deserialize, Serialize};

use crate::core::embedding::{PromptCrossfade, PromptWeights};
use crate::core::sampler::history::HistoryRing;
use crate::core::sampler::noise::SeededNoise;
use crate::error::{HeliosError, echo};

/// Identifies one stream (a screen, a cutscene) inside a runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
// Reflect only with the Bevy layer: the core itself never needs Bevy.
#[cfg_attr(feature = "plugin", derive(bevy::reflect::Reflect))]
pub struct StreamId(pub u64);

/// Everything needed to continue a stream exactly: seed and RNG position, chunk index, the history
/// ring with its anchor, and the prompt crossfade. Save it with [`GenerationState::to_ron`] and
/// restore with [`GenerationState::from_ron`]; the restored stream produces the same bytes.
///
/// Restoring checks every field against the model ([`crate::core::model::HeliosModel::restore`]):
/// a damaged or foreign save is a typed error, never a panic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationState {
    /// Name of the model the state belongs to (checked on restore).
    pub model: String,
    /// [`crate::core::manifest::ModelManifest::model_hash`] of that model (checked on restore and by every
    /// chunk). Saves written before it existed have none (empty) and are checked by name only.
    #[serde(default)]
    pub model_hash: String,
    /// The seed the stream started from.
    pub seed: u64,
    /// Index of the next chunk (0 = the first, amplified chunk).
    pub chunk_index: u64,
    /// RNG position.
    pub noise: SeededNoise,
    /// History latents and anchor.
    pub history: HistoryRing,
    /// Prompt weights and crossfade progress.
    pub prompt: PromptCrossfade,
}

impl GenerationState {
    /// Serialises to RON text.
    pub fn to_ron(&self) -> Result<String, HeliosError> {
        ron::ser::to_string(self)
            .map_err(|e| HeliosError::internal(format!("serialising generation state: {e}")))
    }

    /// Parses RON text, without checking it against a model; use
    /// [`crate::core::model::HeliosModel::restore`] for that.
    pub fn from_ron(text: &str) -> Result<Self, HeliosError> {
        ron::from_str(text).map_err(|e| HeliosError::StateInvalid {
            field: "(syntax)".into(),
            reason: echo(&e.to_string()),
        })
    }

    /// Sets new prompt weights; the change shows from the next chunk on (crossfaded if configured).
    ///
    /// Weights are checked when the next chunk starts (a NaN, infinite or negative weight fails it with
    /// [`HeliosError::InvalidWeights`] and leaves the state as it was); [`Self::try_set_prompt`] checks now.
    pub fn set_prompt(&mut self, weights: PromptWeights) {
        self.prompt.set_target(weights);
    }

    /// [`Self::set_prompt`] after [`PromptWeights::validate`]; on error nothing changes.
    pub fn try_set_prompt(&mut self, weights: PromptWeights) -> Result<(), HeliosError> {
        weights.validate()?;
        self.prompt.set_target(weights);
        Ok(())
    }
}

/// How a stream starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamConfig {
    /// Seed for all draws.
    pub seed: u64,
    /// Initial prompt weights.
    pub prompt: PromptWeights,
    /// Chunks a prompt change takes to blend in (1 = the next chunk uses the new prompt fully).
    pub crossfade_chunks: u32,
}

impl StreamConfig {
    /// One prompt, a seed, immediate prompt changes.
    pub fn new(prompt: PromptWeights, seed: u64) -> Self {
        Self {
            seed,
            prompt,
            crossfade_chunks: 1,
        }
    }
}

/// Wall-clock cost of one chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChunkTimings {
    /// Sampling (transformer calls and the math between them), seconds.
    pub denoise_s: f64,
    /// VAE decode, seconds.
    pub decode_s: f64,
}

/// One decoded chunk: RGBA8 frames, ready for an image.
#[derive(Clone, Debug)]
pub struct Chunk {
    /// Chunk index within the stream.
    pub index: u64,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// `frames_per_chunk` frames, each `width·height·4` bytes, row-major RGBA.
    pub frames: Vec<Vec<u8>>,
    /// Prompt weights the chunk was generated with.
    pub prompt: PromptWeights,
    /// Timings.
    pub timings: ChunkTimings,
}
