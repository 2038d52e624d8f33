//! # bevy_helios
//!
//! Real-time generative video inside a Bevy game: the Helios video diffusion model (autoregressive
//! 33-frame chunks, multi-term history memory, pyramid DMD-distilled sampler) exported to ONNX and run
//! through ONNX Runtime (`ort`) on TensorRT, CUDA or the CPU.
//!
//! ## How it works
//! The inference core ([`core`]) needs no engine:
//! [`core::manifest`] describes an exported model directory, [`core::runtime`] finds ONNX Runtime and
//! opens the graphs on the first provider that works, [`core::sampler`] runs the Helios-Distilled loop
//! (pyramid stages, DMD updates, block-noise renoising, history ring), and [`core::model::HeliosModel`]
//! turns a [`core::stream::GenerationState`] into decoded RGBA chunks.
//!
//! ```no_run
//! use bevy_helios::prelude::*;
//! # fn main() -> Result<(), HeliosError> {
//! let mut model = HeliosModel::load("models/helios-tiny", &RuntimeConfig::default())?;
//! let mut stream = model.new_stream(&StreamConfig::new(PromptWeights::one("day"), 42))?;
//! for _ in 0..3 {
//!     let chunk = model.next_chunk(&mut stream)?; // 33 RGBA frames
//!     println!("chunk {} on {}: {} frames", chunk.index, model.provider().active, chunk.frames.len());
//! }
//! # Ok(()) }
//! ```
//!
#![cfg_attr(feature = "plugin", doc = include_str!("../docs/pipeline.md"))]
//!
//! ## Features
//! - `plugin` (default): the Bevy layer.
//! - `inspector`: an egui window with per-stream metrics and controls.

pub mod core;
pub mod error;

#[cfg(feature = "plugin")]
pub mod backend;
#[cfg(feature = "plugin")]
pub mod conditioning;
#[cfg(feature = "plugin")]
pub mod cutscene;
#[cfg(feature = "plugin")]
pub mod diagnostics;
/// The old name of [`recorder`].
#[cfg(feature = "plugin")]
#[deprecated(since = "0.2.0", note = "renamed to `recorder`")]
pub mod export {
    #[expect(deprecated, reason = "re-exports the old name for one release")]
    pub use crate::recorder::{RecordFormat, ScreenRecorder, StreamRecorder};
}
#[cfg(feature = "inspector")]
pub mod inspector;
#[cfg(feature = "plugin")]
pub mod playout;
#[cfg(feature = "plugin")]
pub mod plugin;
#[cfg(feature = "plugin")]
pub mod recorder;
#[cfg(feature = "plugin")]
pub mod screen;
#[cfg(feature = "plugin")]
pub mod settings;
#[cfg(feature = "plugin")]
pub mod status;
#[cfg(feature = "plugin")]
pub mod worker;

pub use error::HeliosError;

/// The types most users need.
pub mod prelude {
    pub use crate::core::embedding::PromptWeights;
    pub use crate::core::model::HeliosModel;
    pub use crate::core::runtime::{Provider, RuntimeConfig};
    pub use crate::core::stream::{Chunk, GenerationState, StreamConfig, StreamId};
    pub use crate::error::HeliosError;

    #[cfg(feature = "inspector")]
    pub use crate::inspector::HeliosInspectorPlugin;
    /// The old name of [`ScreenRecorder`].
    #[cfg(feature = "plugin")]
    #[expect(deprecated, reason = "keeps the old name for one release")]
    pub use crate::recorder::StreamRecorder;
    #[cfg(feature = "plugin")]
    pub use crate::{
        backend::{HeliosBackend, ModelInfo},
        conditioning::{Conditioning, HeliosConditioningExt},
        cutscene::{
            Cutscene, CutsceneFailed, CutsceneFinished, CutsceneOutcome, CutsceneShotStarted,
            PlayCutscene, SkipCutscene,
        },
        plugin::{HeliosPlugin, HeliosSystems},
        recorder::ScreenRecorder,
        screen::{HeliosScreen, HeliosStream, HeliosStreamStats, StreamPriority},
        settings::HeliosSettings,
        status::{HeliosLoadFailed, HeliosModelInfo, HeliosStatus, StreamFailed, helios_ready},
    };
}
