//! Everything that crosses between the app and the `helios-worker` thread. Frames travel inside
//! [`FromWorker::Chunk`] by move: the worker's `Vec<u8>`s end up in the screens' images uncopied.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::ModelInfo;
use crate::core::embedding::PromptWeights;
use crate::core::stream::{Chunk, StreamConfig, StreamId};
use crate::error::HeliosError;

/// One entry of the generation plan: generate chunks of `stream` while its next chunk index is below
/// `until`. Absolute targets make resending a plan harmless (no chunk is generated twice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRequest {
    /// The stream.
    pub stream: StreamId,
    /// Generate while the stream's chunk index is below this.
    pub until: u64,
}

/// App → worker.
#[derive(Debug)]
pub enum ToWorker {
    /// Open a stream (fresh history at `config.seed`).
    Open {
        /// New stream id.
        stream: StreamId,
        /// Seed, prompt, crossfade.
        config: StreamConfig,
    },
    /// Close a stream and drop its state.
    Close {
        /// The stream.
        stream: StreamId,
    },
    /// New prompt weights from the next chunk on, blended over `crossfade_chunks`.
    SetPrompt {
        /// The stream.
        stream: StreamId,
        /// Target weights.
        weights: PromptWeights,
        /// Chunks the change blends over (≥ 1).
        crossfade_chunks: u32,
    },
    /// Image-to-video: condition the stream on an RGBA8 image.
    ConditionImage {
        /// The stream.
        stream: StreamId,
        /// Pixels, row-major RGBA8.
        rgba: Vec<u8>,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// Replace the generation plan (ordered, most urgent first).
    Plan(Vec<ChunkRequest>),
    /// Toggle fast start.
    SetFastStart(bool),
    /// Stop the thread.
    Shutdown,
}

impl ToWorker {
    /// The stream a message is about, if any.
    pub fn stream(&self) -> Option<StreamId> {
        match self {
            Self::Open { stream, .. }
            | Self::Close { stream }
            | Self::SetPrompt { stream, .. }
            | Self::ConditionImage { stream, .. } => Some(*stream),
            _ => None,
        }
    }

    /// True if a newer message `other` makes this one pointless (kept newest per stream).
    pub fn superseded_by(&self, other: &ToWorker) -> bool {
        match (self, other) {
            (Self::Plan(_), Self::Plan(_)) | (Self::SetFastStart(_), Self::SetFastStart(_)) => true,
            (Self::SetPrompt { stream: a, .. }, Self::SetPrompt { stream: b, .. }) => a == b,
            (Self::ConditionImage { stream: a, .. }, Self::ConditionImage { stream: b, .. }) => {
                a == b
            }
            _ => false,
        }
    }
}

/// Worker → app.
#[derive(Debug)]
pub enum FromWorker {
    /// Loading progress.
    Loading {
        /// Stage name.
        stage: String,
        /// 0..=1.
        progress: f32,
    },
    /// The model is loaded.
    Ready(ModelInfo),
    /// The model could not be loaded; the worker idles until shutdown.
    LoadFailed(Arc<HeliosError>),
    /// A chunk of frames.
    Chunk {
        /// The stream.
        stream: StreamId,
        /// The frames (moved).
        chunk: Chunk,
        /// Wall time the worker spent on it.
        elapsed: Duration,
    },
    /// An operation on a stream failed; the stream stops generating until its prompt changes.
    StreamFailed {
        /// The stream.
        stream: StreamId,
        /// Why.
        error: Arc<HeliosError>,
    },
    /// A job panicked; the worker reloaded the model and kept the saved stream states.
    Crashed {
        /// The stream of the job.
        stream: Option<StreamId>,
        /// Panic message.
        message: String,
    },
}
