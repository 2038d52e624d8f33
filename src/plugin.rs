//! [`HeliosPlugin`] and [`HeliosSystems`]: wiring only. The systems live in their modules.

use bevy::asset::AssetPlugin;
use bevy::camera::visibility::{VisibilityPlugin, VisibilitySystems};
use bevy::prelude::*;

use crate::cutscene::{
    self, Cutscene, CutsceneFailed, CutsceneFinished, CutsceneLoader, CutsceneShotStarted,
    PendingCutscenes, PlayCutscene, SkipCutscene,
};
use crate::diagnostics::{self, MainThreadCost};
use crate::playout;
use crate::recorder;
use crate::screen::{
    self, HeliosScreen, HeliosStream, HeliosStreamStats, HeliosStreams, VisibilityTracking,
};
use crate::settings::{self, HeliosSettings};
use crate::status::{HeliosLoadFailed, HeliosModelInfo, HeliosStatus, StreamFailed, WorkerCrashed};
use crate::worker::{self, Arrivals, GeneratorLoad, StreamDemand, WorkerOutbox};

/// The plugin's system sets, in frame order: Receive → Conditioning → Dispatch → Playout.
#[derive(SystemSet, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HeliosSystems {
    /// `PreUpdate`: worker replies become status, messages and queued frames. Read
    /// [`HeliosStatus`] and [`StreamFailed`] after it.
    Receive,
    /// `Update`: conditioning systems and cutscenes write [`HeliosScreen`]s.
    /// Put systems that compute game state for conditioning before it.
    Conditioning,
    /// `PostUpdate`, after `VisibilitySystems::CheckVisibility`: screens are measured, their streams
    /// opened or updated, the next chunks planned (each screen's share of the generator) and sent.
    /// Edit screens before it.
    Dispatch,
    /// `PostUpdate`, after `Dispatch`: due frames (at each screen's playout rate) are written into the
    /// screens' images; metrics.
    Playout,
}

/// Real-time Helios video on in-world screens and cutscenes.
///
/// Add it after `DefaultPlugins` (or `MinimalPlugins` + `AssetPlugin`). The worker thread starts in
/// `Startup` and loads the model in the background; [`HeliosStatus`] says how that goes.
#[derive(Default)]
pub struct HeliosPlugin {
    /// Settings; None keeps a [`HeliosSettings`] resource already inserted, or the defaults.
    pub settings: Option<HeliosSettings>,
}

impl HeliosPlugin {
    /// The plugin with these settings.
    pub fn with_settings(settings: HeliosSettings) -> Self {
        Self {
            settings: Some(settings),
        }
    }
}

impl Plugin for HeliosPlugin {
    fn build(&self, app: &mut App) {
        assert!(
            app.is_plugin_added::<AssetPlugin>(),
            "HeliosPlugin needs AssetPlugin: add it after DefaultPlugins, or after MinimalPlugins and AssetPlugin"
        );
        match &self.settings {
            Some(settings) => {
                app.insert_resource(settings.clone());
            }
            None => {
                app.init_resource::<HeliosSettings>();
            }
        }
        if !app.world().contains_resource::<Assets<Image>>() {
            app.init_asset::<Image>();
        }
        app.init_resource::<HeliosStatus>()
            .init_resource::<HeliosStreams>()
            .init_resource::<WorkerOutbox>()
            .init_resource::<StreamDemand>()
            .init_resource::<Arrivals>()
            .init_resource::<GeneratorLoad>()
            .init_resource::<MainThreadCost>()
            .init_resource::<PendingCutscenes>()
            .init_resource::<VisibilityTracking>()
            // Reflection: inspectors, scenes and the remote protocol see screens, stats, settings and status.
            .register_type::<HeliosScreen>()
            .register_type::<HeliosStream>()
            .register_type::<HeliosStreamStats>()
            .register_type::<HeliosSettings>()
            .register_type::<HeliosStatus>()
            .register_type::<HeliosModelInfo>()
            .register_type::<HeliosLoadFailed>()
            .register_type::<StreamFailed>()
            .register_type::<WorkerCrashed>()
            .register_type::<PlayCutscene>()
            .register_type::<SkipCutscene>()
            .register_type::<CutsceneShotStarted>()
            .register_type::<CutsceneFinished>()
            .register_type::<CutsceneFailed>()
            .add_message::<HeliosLoadFailed>()
            .add_message::<StreamFailed>()
            .add_message::<WorkerCrashed>()
            .add_message::<PlayCutscene>()
            .add_message::<SkipCutscene>()
            .add_message::<CutsceneShotStarted>()
            .add_message::<CutsceneFinished>()
            .add_message::<CutsceneFailed>()
            .init_asset::<Cutscene>()
            .init_asset_loader::<CutsceneLoader>()
            .configure_sets(
                PostUpdate,
                (HeliosSystems::Dispatch, HeliosSystems::Playout)
                    .chain()
                    .after(VisibilitySystems::CheckVisibility),
            )
            .add_systems(
                Startup,
                (settings::sanitize_settings, worker::spawn_worker).chain(),
            )
            .add_systems(
                PreUpdate,
                (
                    settings::sanitize_settings.run_if(resource_changed::<HeliosSettings>),
                    worker::receive,
                    screen::lifecycle::take_arrivals,
                )
                    .chain()
                    .in_set(HeliosSystems::Receive),
            )
            .add_systems(
                Update,
                (cutscene::reload, cutscene::start, cutscene::drive)
                    .chain()
                    .in_set(HeliosSystems::Conditioning),
            )
            .add_systems(
                PostUpdate,
                (
                    screen::display::attach_late,
                    screen::display::measure,
                    screen::lifecycle::sync,
                    worker::dispatch,
                )
                    .chain()
                    .in_set(HeliosSystems::Dispatch),
            )
            .add_systems(
                PostUpdate,
                (playout::playout, playout::record_diagnostics)
                    .chain()
                    .in_set(HeliosSystems::Playout),
            )
            .init_resource::<recorder::FinishingRecordings>()
            .add_systems(Last, recorder::finish_on_exit)
            .add_observer(screen::open_stream)
            .add_observer(screen::close_stream);
        diagnostics::register(app);
    }

    fn finish(&self, app: &mut App) {
        let tracking = app.is_plugin_added::<VisibilityPlugin>();
        app.insert_resource(VisibilityTracking(tracking));
    }
}
