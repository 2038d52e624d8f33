//! Game-state conditioning in one line: a UI screen whose prompt follows the mouse, calm on the left
//! and stormy on the right, registered with `add_helios_conditioning`.
//!
//! Look at: only changes travel to the worker (the blend moves in steps of 0.2), and each shows in the
//! next generated chunk.
//!
//! ```sh
//! cargo run --release --example conditioning      # add `-- --pattern` to run without ONNX Runtime
//! ```

use bevy::prelude::*;
use bevy::window::PrimaryWindow;
use bevy_helios::backend::HeliosBackend;
use bevy_helios::prelude::*;

/// Marks the screen the conditioning drives.
#[derive(Component)]
struct Weather;

fn main() -> AppExit {
    let mut settings = HeliosSettings::default();
    if std::env::args().any(|a| a == "--pattern") {
        settings.backend = HeliosBackend::pattern();
    }
    App::new()
        .add_plugins((DefaultPlugins, HeliosPlugin::with_settings(settings)))
        .add_systems(Startup, setup)
        .add_helios_conditioning::<With<Weather>, _>(weather_from_mouse)
        .run()
}

fn setup(mut commands: Commands) {
    commands.spawn(Camera2d);
    commands.spawn((
        Weather,
        HeliosScreen::new(PromptWeights::one("calm")),
        ImageNode::default(),
        Node {
            width: Val::Percent(100.0),
            height: Val::Percent(100.0),
            ..default()
        },
    ));
}

/// The mouse's x position picks the blend between calm and storm, in steps of 0.2.
fn weather_from_mouse(window: Query<&Window, With<PrimaryWindow>>) -> Conditioning {
    let t = window
        .single()
        .ok()
        .and_then(|w| w.cursor_position().map(|p| p.x / w.width()))
        .map_or(0.0, |t| (t * 5.0).round() / 5.0);
    Conditioning::new(
        PromptWeights::one("calm")
            .with("calm", 1.0 - t + 1e-3)
            .with("storm", t),
    )
}
