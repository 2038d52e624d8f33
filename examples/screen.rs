//! One in-world screen: a quad whose material shows a generated stream; keys 1-4 switch its prompt
//! (day, dusk, night, dawn), P pauses, S restarts it with a new seed.
//!
//! Look at: the change arriving with the next chunk, blended over two chunks.
//!
//! ```sh
//! cargo run --release --example screen            # add `-- --pattern` to run without ONNX Runtime
//! ```

use bevy::prelude::*;
use bevy_helios::backend::HeliosBackend;
use bevy_helios::prelude::*;

/// Prompts on keys 1-4.
const PROMPTS: [(KeyCode, &str); 4] = [
    (KeyCode::Digit1, "day"),
    (KeyCode::Digit2, "dusk"),
    (KeyCode::Digit3, "night"),
    (KeyCode::Digit4, "dawn"),
];

fn main() -> AppExit {
    let mut settings = HeliosSettings::default();
    if std::env::args().any(|a| a == "--pattern") {
        settings.backend = HeliosBackend::pattern();
    }
    App::new()
        .add_plugins((DefaultPlugins, HeliosPlugin::with_settings(settings)))
        .add_systems(Startup, setup)
        .add_systems(Update, control)
        .run()
}

fn setup(
    mut commands: Commands,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
) {
    commands.spawn((
        HeliosScreen::new(PromptWeights::one("day")).with_crossfade(2),
        Mesh3d(meshes.add(Rectangle::new(3.2, 3.2))),
        MeshMaterial3d(materials.add(StandardMaterial::default())),
    ));
    commands.spawn((
        Camera3d::default(),
        Transform::from_xyz(0.0, 0.0, 4.5).looking_at(Vec3::ZERO, Vec3::Y),
    ));
}

fn control(keys: Res<ButtonInput<KeyCode>>, mut screens: Query<&mut HeliosScreen>) {
    for mut screen in &mut screens {
        for (key, prompt) in PROMPTS {
            if keys.just_pressed(key) {
                screen.prompt = PromptWeights::one(prompt);
            }
        }
        if keys.just_pressed(KeyCode::KeyP) {
            screen.paused = !screen.paused;
        }
        if keys.just_pressed(KeyCode::KeyS) {
            screen.seed += 1;
        }
    }
}
