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
#[derive(Resource, Clone, Debug, Default)]
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
    },
    /// Generating after trouble (the worker crashed and restarted, a stream failed).
    Degraded {
        /// Provider in use.
        provider: ProviderReport,
        /// What went wrong last.
        reason: String,
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

    /// The provider in use, once loaded.
    pub fn provider(&self) -> Option<&ProviderReport> {
        match self {
            Self::Ready { provider } | Self::Degraded { provider, .. } => Some(provider),
            _ => None,
        }
    }
}

/// Run condition: the model is loaded and generating.
pub fn helios_ready(status: Option<Res<HeliosStatus>>) -> bool {
    status.is_some_and(|s| s.is_ready())
}

/// The loaded model's sizes, prompt names and provider (inserted when the model is ready).
#[derive(Resource, Clone, Debug, Deref)]
pub struct HeliosModelInfo(pub ModelInfo);

/// The model could not be loaded (missing directory, corrupt file, no provider). Written once.
#[derive(Message, Clone, Debug)]
pub struct HeliosLoadFailed {
    /// Why.
    pub error: Arc<HeliosError>,
}

/// A stream could not open, change prompt, take an image or generate a chunk. The screen shows the
/// fallback image until its prompt or seed changes.
#[derive(Message, Clone, Debug)]
pub struct StreamFailed {
    /// The screen entity.
    pub entity: Entity,
    /// The stream.
    pub stream: StreamId,
    /// Why.
    pub error: Arc<HeliosError>,
}

/// The worker panicked during a job and restarted from the saved stream states.
#[derive(Message, Clone, Debug)]
pub struct WorkerCrashed {
    /// The stream whose job panicked, if any.
    pub stream: Option<StreamId>,
    /// The panic message.
    pub message: String,
}
