//! [`HeliosError`]: every way generation can fail, with the context needed to fix it.

use std::path::PathBuf;

/// An error from loading a model, running a graph or sampling.
///
/// Travels inside `Arc` in messages and status; every variant says what was expected and what was found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeliosError {
    /// The model directory or one of its files does not exist or cannot be read.
    #[error("model file {path} cannot be read: {source}")]
    ModelMissing {
        /// The file that was looked for.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A model file exists but is not what the manifest says (hash mismatch, truncated, not ONNX).
    #[error("model file {path} is corrupt: {reason}")]
    ModelCorrupt {
        /// The bad file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `manifest.ron` does not parse or is inconsistent.
    #[error("manifest {path} is invalid: {reason}")]
    ManifestInvalid {
        /// The manifest file.
        path: PathBuf,
        /// Parse error or the failed check.
        reason: String,
    },
    /// A graph's inputs or outputs disagree with the manifest.
    #[error("graph `{graph}` disagrees with the manifest: {reason}")]
    ManifestMismatch {
        /// Graph key, e.g. `denoiser_stage0`.
        graph: String,
        /// Which name, shape or dtype differs.
        reason: String,
    },
    /// A tensor handed to the sampler or a graph has the wrong shape.
    #[error("shape mismatch for {what}: expected {expected:?}, got {actual:?}")]
    ShapeMismatch {
        /// What the tensor is.
        what: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape it got.
        actual: Vec<usize>,
    },
    /// A prompt name is not in the model's embedding bank (and the model has no text encoder to embed it
    /// as free text).
    #[error(
        "prompt `{name}` is not in the embedding bank (known: {known}); free-text prompts need a model with a text encoder"
    )]
    UnknownPrompt {
        /// The missing name.
        name: String,
        /// Some known names, comma separated.
        known: String,
    },
    /// A free-text prompt is empty or only whitespace.
    #[error("the prompt text is empty")]
    EmptyPrompt,
    /// The ONNX Runtime library could not be found, fetched or loaded.
    #[error("ONNX Runtime is unavailable: {0}")]
    RuntimeUnavailable(String),
    /// An execution provider could not be registered (missing library, no device, failed engine build).
    #[error("execution provider {provider} is unavailable: {reason}")]
    ProviderUnavailable {
        /// Provider name (`TensorRT`, `CUDA`, `CPU`).
        provider: String,
        /// Why it failed.
        reason: String,
    },
    /// No provider in the configured list could run the model.
    #[error("no execution provider could run the model: {0}")]
    NoProvider(String),
    /// ONNX Runtime failed while running a graph (including out of device memory).
    #[error("running `{graph}` failed: {reason}")]
    Inference {
        /// Graph key.
        graph: String,
        /// ONNX Runtime's message.
        reason: String,
    },
    /// A graph produced NaN or infinite values.
    #[error("`{graph}` produced {count} non-finite values")]
    NonFinite {
        /// Graph key.
        graph: String,
        /// How many values were NaN or infinite.
        count: usize,
    },
    /// Arguments or state that cannot be used (bad weights, exhausted injected noise, wrong model state).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Reading or writing a user file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl HeliosError {
    /// Wraps an `ort` error for a graph.
    pub fn inference(graph: &str, err: impl std::fmt::Display) -> Self {
        Self::Inference {
            graph: graph.to_string(),
            reason: err.to_string(),
        }
    }
}
