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
    /// `manifest.ron` does not parse, is inconsistent, or asks for more memory than the caps in
    /// [`crate::core::limits`] allow. Re-export the model.
    #[error("manifest {path} is invalid at `{field}`: {reason}; re-export the model")]
    ManifestInvalid {
        /// The manifest file.
        path: PathBuf,
        /// The field that failed, e.g. `scheduler.stages` or `graphs.vae_decoder.outputs.video`
        /// (`(syntax)` when the text does not parse).
        field: String,
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
    /// The ONNX Runtime library could not be found or loaded.
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
    /// Arguments that cannot be used. Nothing in this crate returns it any more: the typed variants
    /// [`StateInvalid`](Self::StateInvalid), [`StateModelMismatch`](Self::StateModelMismatch),
    /// [`InvalidWeights`](Self::InvalidWeights), [`Unsupported`](Self::Unsupported),
    /// [`AllocationTooLarge`](Self::AllocationTooLarge) and [`Internal`](Self::Internal) replaced it.
    /// Kept so that games matching on it still compile.
    #[deprecated(
        note = "never returned; match StateInvalid, StateModelMismatch, InvalidWeights, Unsupported, AllocationTooLarge or Internal"
    )]
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A saved [`GenerationState`](crate::core::stream::GenerationState) (or injected noise) is damaged or
    /// does not fit the model: wrong history size, head outside the ring, chunk index at its limit.
    #[error(
        "saved stream state is invalid at `{field}`: {reason}; delete the save or start a new stream"
    )]
    StateInvalid {
        /// The state field, e.g. `history.head`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A saved state belongs to another model (name or model hash differ).
    #[error(
        "saved stream state is for model {found}, this is {expected}; load that model or delete the save"
    )]
    StateModelMismatch {
        /// This model: name and hash.
        expected: String,
        /// The state's model: name and hash.
        found: String,
    },
    /// Prompt weights that cannot be blended: NaN, infinite or negative, no positive weight, a bad
    /// `name=weight` spec.
    #[error("invalid prompt weights: {reason}")]
    InvalidWeights {
        /// Which prompt and why (user text cut to [`MAX_ECHO_CHARS`]).
        reason: String,
    },
    /// The model or build cannot do what was asked (no VAE encoder for image conditioning, no device-loop
    /// graphs, no TensorRT entry to prepare engines for, a tensor dtype a buffer cannot hold).
    #[error("not supported: {what}")]
    Unsupported {
        /// What was asked, and why it cannot be done.
        what: String,
    },
    /// A size computed from a file or argument would exceed a cap of [`crate::core::limits`].
    #[error("{what} would need {elements} elements, over the limit of {limit}")]
    AllocationTooLarge {
        /// What would have been allocated.
        what: String,
        /// Elements asked for (saturated at `u128::MAX`).
        elements: u128,
        /// The cap.
        limit: u64,
    },
    /// A bug in this crate: an invariant the code relies on did not hold. Please report it.
    #[error("internal error ({context}); please report this")]
    Internal {
        /// Where and what.
        context: String,
    },
    /// Reading or writing a user file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// How many characters of user text (a prompt, a weight spec) an error repeats.
pub const MAX_ECHO_CHARS: usize = 100;

/// `text` cut to [`MAX_ECHO_CHARS`] characters (on a char boundary) with `…` and the full length appended
/// when cut, so an error never repeats a megabyte prompt.
pub fn echo(text: &str) -> String {
    match text.char_indices().nth(MAX_ECHO_CHARS) {
        None => text.to_string(),
        Some((end, _)) => format!("{}… ({} bytes)", &text[..end], text.len()),
    }
}

impl HeliosError {
    /// Wraps an `ort` error for a graph.
    pub fn inference(graph: &str, err: impl std::fmt::Display) -> Self {
        Self::Inference {
            graph: graph.to_string(),
            reason: err.to_string(),
        }
    }

    /// An [`HeliosError::Internal`] with `context`.
    pub fn internal(context: impl Into<String>) -> Self {
        Self::Internal {
            context: context.into(),
        }
    }

    /// An [`HeliosError::StateInvalid`] for `field`.
    pub fn state(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::StateInvalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_cuts_long_text_on_a_char_boundary() {
        assert_eq!(echo("day"), "day");
        let long = "é".repeat(1_000_000);
        let cut = echo(&long);
        assert!(
            cut.chars().count() < MAX_ECHO_CHARS + 20,
            "a 1 MB text must be cut to about {MAX_ECHO_CHARS} characters, got {}",
            cut.len()
        );
        assert!(cut.ends_with("(2000000 bytes)"), "{cut}");
    }
}
