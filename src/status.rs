//! How the plugin is doing: the [`HeliosStatus`] resource, the [`HeliosModelInfo`] of the loaded model,
//! the failure messages ([`HeliosLoadFailed`], [`StreamFailed`], [`WorkerCrashed`]) and the
//! [`helios_ready`] run condition.

use std::sync::Arc;

use bevy::prelude::*;

use crate::backend::ModelInfo;
use crate::core::runtime::ProviderReport;
use crate::core::stream::StreamId;
use crate::error::HeliosError;

/// The state of the model behind every screen.
///
/// Reflected as an opaque value (inspectors show its `Debug` text).
#[derive(Resource, Clone, Debug, Default, Reflect)]
#[reflect(opaque, Resource, Debug, Default)]
#[non_exhaustive]
pub enum HeliosStatus {
    /// The worker is loading the model (`stage` names the step; `progress` in 0..=1).
    Loading {
        /// What is being done.
        stage: String,
        /// Rough progress, 0..=1.
        progress: f32,
    },
    /// Generating; `provider` says which execution provider runs the model.
    Ready {
        /// Provider in use and the ones skipped (with reasons).
        provider: ProviderReport,
        /// How many screens the generator keeps at full rate (None until the first chunks are timed).
        capacity: Option<GenerationCapacity>,
    },
    /// Generating after trouble (the worker crashed and restarted, a stream failed).
    Degraded {
        /// Provider in use.
        provider: ProviderReport,
        /// What went wrong last.
        reason: String,
        /// How many screens the generator keeps at full rate (None until the first chunks are timed).
        capacity: Option<GenerationCapacity>,
    },
    /// No model: every screen shows the fallback image; the app keeps running.
    Failed(Arc<HeliosError>),
    /// Before the worker has said anything.
    #[default]
    Starting,
}

impl HeliosStatus {
    /// True while frames can be generated (`Ready` or `Degraded`).
    pub fn is_ready(&self) -> bool {
        matches!(self, Self::Ready { .. } | Self::Degraded { .. })
    }

    /// The error, if the model failed.
    pub fn error(&self) -> Option<&Arc<HeliosError>> {
        match self {
            Self::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// The generator's measured capacity, once chunks have been timed.
    pub fn capacity(&self) -> Option<&GenerationCapacity> {
        match self {
            Self::Ready { capacity, .. } | Self::Degraded { capacity, .. } => capacity.as_ref(),
            _ => None,
        }
    }

    /// Records a new capacity measurement (ignored unless `Ready` or `Degraded`).
    pub(crate) fn set_capacity(&mut self, new: GenerationCapacity) {
        if let Self::Ready { capacity, .. } | Self::Degraded { capacity, .. } = self {
            *capacity = Some(new);
        }
    }

    /// The provider in use, once loaded.
    pub fn provider(&self) -> Option<&ProviderReport> {
        match self {
            Self::Ready { provider, .. } | Self::Degraded { provider, .. } => Some(provider),
            _ => None,
        }
    }
}

/// What the generator sustains, measured from the chunks it makes: decide from it how many screens to
/// light up. Generation slower than playout is normal (the 14B model makes ~13 frames a second on an
/// H100); screens then share the generator and play slower (see
/// [`HeliosStreamStats::playout_fps`](crate::screen::HeliosStreamStats::playout_fps)).
#[derive(Clone, Copy, Debug, PartialEq, Reflect)]
#[reflect(Debug, PartialEq)]
pub struct GenerationCapacity {
    /// Frames the model generates per second of worker time, all screens together.
    pub generated_fps: f32,
    /// Screens that can play at the full `playout_fps` at once (`generated_fps / playout_fps`; below 1
    /// even one screen plays slower than full rate).
    pub full_rate_streams: f32,
}

impl GenerationCapacity {
    /// Within 5 % of each other (status is rewritten only for visible changes).
    pub(crate) fn roughly_equals(&self, other: &Self) -> bool {
        let close = |a: f32, b: f32| (a - b).abs() <= 0.05 * a.abs().max(b.abs());
        close(self.generated_fps, other.generated_fps)
            && close(self.full_rate_streams, other.full_rate_streams)
    }
}

/// Run condition: the model is loaded and generating.
pub fn helios_ready(status: Option<Res<HeliosStatus>>) -> bool {
    status.is_some_and(|s| s.is_ready())
}

/// The loaded model's sizes, prompt names and provider (inserted when the model is ready).
#[derive(Resource, Clone, Debug, Deref, Reflect)]
#[reflect(opaque, Resource, Debug)]
pub struct HeliosModelInfo(pub ModelInfo);

/// The model could not be loaded (missing directory, corrupt file, no provider). Written once.
#[derive(Message, Clone, Debug, Reflect)]
#[reflect(opaque, Debug)]
pub struct HeliosLoadFailed {
    /// Why.
    pub error: Arc<HeliosError>,
}

/// A stream could not open, change prompt, take an image or generate a chunk. The screen shows the
/// fallback image until its prompt or seed changes.
#[derive(Message, Clone, Debug, Reflect)]
#[reflect(opaque, Debug)]
pub struct StreamFailed {
    /// The screen entity.
    pub entity: Entity,
    /// The stream.
    pub stream: StreamId,
    /// Why.
    pub error: Arc<HeliosError>,
}

/// The worker panicked during a job and restarted from the saved stream states.
#[derive(Message, Clone, Debug, Reflect)]
#[reflect(Debug)]
pub struct WorkerCrashed {
    /// The stream whose job panicked, if any.
    pub stream: Option<StreamId>,
    /// The panic message.
    pub message: String,
}
