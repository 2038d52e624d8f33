//! A cutscene from `assets/cutscenes/intro.cutscene.ron`, played fullscreen; its first shot depends
//! on the `choice` variable given when it starts. Space skips; the app exits when it finishes.
//!
//! Look at: the shot log (`CutsceneShotStarted`) and the crossfade between the first two shots.
//!
//! ```sh
//! cargo run --release --example cutscene -- villain        # or hero; add --pattern without ONNX Runtime
//! ```

use bevy::prelude::*;
use bevy_helios::backend::HeliosBackend;
use bevy_helios::prelude::*;

fn main() -> AppExit {
    let mut settings = HeliosSettings::default();
    if std::env::args().any(|a| a == "--pattern") {
        settings.backend = HeliosBackend::pattern();
    }
    let choice = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_else(|| "hero".into());
    let assets = bevy_helios::backend::resolve_model_dir(std::path::Path::new("assets"));
    App::new()
        .add_plugins((
            DefaultPlugins.set(AssetPlugin {
                file_path: assets.to_string_lossy().into_owned(),
                ..default()
            }),
            HeliosPlugin::with_settings(settings),
        ))
        .insert_resource(Choice(choice))
        .add_systems(Startup, start)
        .add_systems(Update, (log_shots, skip, exit_when_done))
        .run()
}

#[derive(Resource)]
struct Choice(String);

fn start(
    mut commands: Commands,
    assets: Res<AssetServer>,
    choice: Res<Choice>,
    mut play: MessageWriter<PlayCutscene>,
) {
    commands.spawn(Camera2d);
    let intro = assets.load("cutscenes/intro.cutscene.ron");
    play.write(PlayCutscene::new(intro).with_variable("choice", choice.0.clone()));
}

fn log_shots(mut shots: MessageReader<CutsceneShotStarted>) {
    for shot in shots.read() {
        info!("shot {} ({:?}): {:?}", shot.shot, shot.name, shot.prompt);
    }
}

fn skip(keys: Res<ButtonInput<KeyCode>>, mut skips: MessageWriter<SkipCutscene>) {
    if keys.just_pressed(KeyCode::Space) {
        skips.write(SkipCutscene);
    }
}

fn exit_when_done(mut done: MessageReader<CutsceneFinished>, mut exit: MessageWriter<AppExit>) {
    if let Some(done) = done.read().next() {
        info!("cutscene finished: {:?}", done.outcome);
        exit.write(AppExit::Success);
    }
}
