//! Game-state conditioning: a system that returns a [`Conditioning`] (prompt weights, optionally a
//! reference image) drives every screen matching a filter. Register it in one line:
//!
//! ```no_run
//! # use bevy::prelude::*;
//! # use bevy_helios::prelude::*;
//! #[derive(Resource)]
//! struct GameClock(f32);
//! #[derive(Component)]
//! struct Window;
//!
//! # let mut app = App::new();
//! app.add_helios_conditioning::<With<Window>, _>(|clock: Res<GameClock>| {
//!     Conditioning::new(PromptWeights::one("day").with("night", clock.0))
//! });
//! ```
//!
//! The system runs every frame in [`HeliosSystems::Conditioning`](crate::plugin::HeliosSystems); the
//! screen is only written when the output differs, and only changes travel to the worker, where they
//! apply from the very next generated chunk (blended over the screen's crossfade).

use bevy::ecs::query::QueryFilter;
use bevy::prelude::*;

use crate::core::embedding::PromptWeights;
use crate::diagnostics::MainThreadCost;
use crate::plugin::HeliosSystems;
use crate::screen::HeliosScreen;

/// What a screen should show: prompt weights and an optional reference image (image-to-video).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conditioning {
    /// Prompt weights over the model's bank.
    pub prompt: PromptWeights,
    /// Reference image, e.g. a camera's render target (read back from the GPU when needed).
    pub image: Option<Handle<Image>>,
}

impl Conditioning {
    /// Prompt weights only.
    pub fn new(prompt: PromptWeights) -> Self {
        Self {
            prompt,
            image: None,
        }
    }

    /// Builder: reference image.
    pub fn with_image(mut self, image: Handle<Image>) -> Self {
        self.image = Some(image);
        self
    }
}

/// Registers conditioning systems on an [`App`].
pub trait HeliosConditioningExt {
    /// Runs `system` every frame and applies its [`Conditioning`] to every [`HeliosScreen`] matching
    /// the query filter `F` (e.g. `With<WindowScreen>`).
    fn add_helios_conditioning<F: QueryFilter + 'static, M>(
        &mut self,
        system: impl IntoSystem<(), Conditioning, M> + 'static,
    ) -> &mut Self;
}

impl HeliosConditioningExt for App {
    fn add_helios_conditioning<F: QueryFilter + 'static, M>(
        &mut self,
        system: impl IntoSystem<(), Conditioning, M> + 'static,
    ) -> &mut Self {
        self.add_systems(
            Update,
            system
                .pipe(apply_conditioning::<F>)
                .in_set(HeliosSystems::Conditioning),
        )
    }
}

/// Writes a conditioning output into the matching screens, touching only fields that differ (so
/// change detection fires only on real changes).
pub fn apply_conditioning<F: QueryFilter>(
    In(conditioning): In<Conditioning>,
    mut screens: Query<&mut HeliosScreen, F>,
    cost: Res<MainThreadCost>,
) {
    let _cost = cost.measure();
    for mut screen in &mut screens {
        if screen.prompt != conditioning.prompt {
            screen.prompt = conditioning.prompt.clone();
        }
        if screen.image != conditioning.image {
            screen.image = conditioning.image.clone();
        }
    }
}
