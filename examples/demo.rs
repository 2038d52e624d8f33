//! A room with generated-video screens: a "window" whose prompt follows an in-game clock
//! (day → dusk → night → dawn), a "mood" screen that gets excited as the player comes close, a small UI
//! monitor, and a glowing floor zone that plays `assets/cutscenes/intro.cutscene.ron`, whose first
//! shot depends on the choice the player made.
//!
//! Look at: the window drifting through the day, the mood screen changing as you walk up to it, the
//! fullscreen cutscene after pressing 1 (hero) or 2 (villain) and stepping onto the zone.
//! Controls: WASD / arrows move, 1 / 2 choose, Space skips the cutscene, F2 the inspector (with
//! `--features inspector`).
//!
//! ```sh
//! cargo run --release --example demo                       # models/helios-nano on the best provider
//! cargo run --release --example demo -- --pattern          # no ONNX Runtime: synthetic networks
//! cargo run --example demo -- --frames 120 --screenshot-at 40:out/a.png --screenshot out/b.png
//! ```
//!
//! `--help` lists every flag (the `Args` struct below); `tests/render_demo.rs` and `tools/soak/soak.py` run
//! it scripted.

use std::f32::consts::{FRAC_PI_2, PI};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bevy::camera::primitives::MeshAabb;
use bevy::diagnostic::FrameCount;
use bevy::prelude::*;
use bevy::render::view::screenshot::{Screenshot, ScreenshotCaptured, save_to_disk};
use bevy::window::PrimaryWindow;
use bevy_helios::backend::HeliosBackend;
use bevy_helios::prelude::*;
use bevy_helios::screen::StreamState;
use clap::Parser;

/// Room half-size in metres.
const ROOM: f32 = 6.0;
/// Player speed, metres per second.
const PLAYER_SPEED: f32 = 3.0;
/// Real seconds per in-game day.
const DAY_SECONDS: f32 = 60.0;
/// Distance at which the mood screen is fully calm.
const MOOD_RANGE: f32 = 7.0;
/// Scripted runs count frames only after this many (pipelines compile in the background).
const WARMUP_FRAMES: u32 = 60;
/// Frames into the intro's first shot at which `--screenshot-cutscene` is taken.
const CUTSCENE_SHOT_DELAY: u32 = 6;
/// Where the cutscene zone is.
const ZONE: Vec3 = Vec3::new(4.0, 0.0, 2.5);
/// Zone radius.
const ZONE_RADIUS: f32 = 1.0;

/// A room with generated-video screens (bevy_helios demo).
#[derive(Parser, Resource, Clone, Debug)]
#[command(args_override_self = true)]
struct Args {
    /// Scripted run: exits by itself N frames after every screen on screen shows video (paused, hidden
    /// and failed screens are not waited for).
    #[arg(long, value_name = "N")]
    frames: Option<u32>,
    /// Save the window at the last scripted frame (PNG), plus `PATH.regions.txt` with each screen's pixel
    /// rectangle (`name x0 y0 x1 y1`) and `PATH.stats.txt` with each screen's state and rates (`name state
    /// frames_shown generated_fps playout_fps longest_freeze_ms`).
    #[arg(long, value_name = "PATH")]
    screenshot: Option<PathBuf>,
    /// Also save one at scripted frame F (repeatable).
    #[arg(long, value_name = "F:PATH", value_parser = frame_and_path)]
    screenshot_at: Vec<(u32, PathBuf)>,
    /// The player walks towards the mood screen by itself.
    #[arg(long)]
    autopilot: bool,
    /// Open the inspector at start (built with `--features inspector`; F2 toggles it).
    #[arg(long)]
    inspector: bool,
    /// At scripted frame F, choose `hero` or `villain` and play the intro; the last screenshot then waits
    /// until the intro has ended and every screen has shown new frames again.
    #[arg(long, value_name = "F:CHOICE", value_parser = frame_and_choice)]
    intro_at: Option<(u32, String)>,
    /// Save a screenshot while the intro plays (a few frames into its first shot).
    #[arg(long, value_name = "PATH")]
    screenshot_cutscene: Option<PathBuf>,
    /// The pattern backend instead of ONNX Runtime.
    #[arg(long)]
    pattern: bool,
    /// Another exported model directory.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Window size.
    #[arg(long, value_name = "WxH", default_value = "1280x720", value_parser = window_size)]
    size: (u32, u32),
    /// Scripted runs fail (exit 2) if a screen shows no video this long after the model is ready, or
    /// after the intro ended.
    #[arg(long, value_name = "SECS", default_value_t = 120.0)]
    timeout: f32,
    /// Print one line to stdout every SECS seconds of real time (any run), e.g. `demo report: t=60.0
    /// frames=3412 window=1380 mood=1402 monitor=1366`: seconds since start, frames the app rendered, then
    /// each screen's frames shown (`tools/soak/soak.py` reads it).
    #[arg(long, value_name = "SECS", value_parser = positive_seconds)]
    report_every: Option<f32>,
}

fn frame_and_path(v: &str) -> Result<(u32, PathBuf), String> {
    let (f, p) = v.split_once(':').ok_or("takes FRAME:PATH")?;
    Ok((f.parse().map_err(|e| format!("{e}"))?, p.into()))
}

fn frame_and_choice(v: &str) -> Result<(u32, String), String> {
    let (f, c) = v.split_once(':').ok_or("takes FRAME:CHOICE")?;
    Ok((f.parse().map_err(|e| format!("{e}"))?, c.to_string()))
}

fn window_size(v: &str) -> Result<(u32, u32), String> {
    let (w, h) = v.split_once('x').ok_or("takes WxH")?;
    let num = |s: &str| s.parse::<u32>().map_err(|e| format!("{e}"));
    Ok((num(w)?, num(h)?))
}

fn positive_seconds(v: &str) -> Result<f32, String> {
    let secs: f32 = v.parse().map_err(|e| format!("{e}"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err("takes a positive number of seconds".into());
    }
    Ok(secs)
}

impl Args {
    /// Parses the command line (bad flags exit 1: 2 means a scripted run timed out). A screenshot
    /// without `--frames` makes the run scripted, up to the last `--screenshot-at` frame.
    fn parse_and_complete() -> Self {
        let mut args = Self::try_parse().unwrap_or_else(|e| {
            if !e.use_stderr() {
                e.exit();
            }
            let _ = e.print();
            std::process::exit(1);
        });
        if (args.screenshot.is_some() || !args.screenshot_at.is_empty()) && args.frames.is_none() {
            args.frames = Some(
                args.screenshot_at
                    .iter()
                    .map(|(f, _)| *f)
                    .max()
                    .unwrap_or(0)
                    .max(1),
            );
        }
        args
    }
}

fn main() -> AppExit {
    let args = Args::parse_and_complete();
    #[cfg(feature = "inspector")]
    let inspector = args.inspector;
    let mut settings = HeliosSettings::default();
    if args.pattern {
        settings.backend = HeliosBackend::pattern();
    }
    if let Some(dir) = &args.model {
        settings.model_dir = dir.clone();
    }
    let mut app = App::new();
    // `assets/` next to the working directory, the executable or this crate, however it is started.
    let assets = bevy_helios::backend::resolve_model_dir(std::path::Path::new("assets"));
    app.add_plugins(
        DefaultPlugins
            .set(AssetPlugin {
                file_path: assets.to_string_lossy().into_owned(),
                ..default()
            })
            .set(WindowPlugin {
                primary_window: Some(Window {
                    title: "bevy_helios demo".into(),
                    resolution: args.size.into(),
                    ..default()
                }),
                ..default()
            }),
    )
    .add_plugins(HeliosPlugin::with_settings(settings))
    .insert_resource(args)
    .insert_resource(GlobalAmbientLight {
        brightness: 250.0,
        ..default()
    })
    .init_resource::<GameClock>()
    .init_resource::<Choice>()
    .init_resource::<Script>()
    .add_systems(Startup, setup)
    .add_systems(
        Update,
        (
            advance_clock,
            move_player,
            choose,
            enter_zone,
            skip,
            show_choice,
            log_status,
        )
            .before(HeliosSystems::Conditioning),
    )
    .add_systems(Update, (scripted_run, report))
    .add_helios_conditioning::<With<WindowScreen>, _>(window_prompt)
    .add_helios_conditioning::<With<MoodScreen>, _>(mood_prompt)
    .add_observer(cutscene_finished);
    #[cfg(feature = "inspector")]
    app.add_plugins(bevy_helios::inspector::HeliosInspectorPlugin { open: inspector });
    app.run()
}

/// The in-game time of day in hours (0..24).
#[derive(Resource, Debug)]
struct GameClock(f32);

impl Default for GameClock {
    fn default() -> Self {
        Self(10.0)
    }
}

/// The player's choice for the intro cutscene.
#[derive(Resource, Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Choice {
    #[default]
    None,
    Hero,
    Villain,
}

#[derive(Component)]
struct Player;
#[derive(Component)]
struct WindowScreen;
#[derive(Component)]
struct MoodScreen;
#[derive(Component)]
struct Zone {
    armed: bool,
}
#[derive(Component)]
struct ChoicePillar(Choice);
#[derive(Resource)]
struct Intro(Handle<Cutscene>);

fn setup(
    mut commands: Commands,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
    assets: Res<AssetServer>,
) {
    commands.insert_resource(Intro(assets.load("cutscenes/intro.cutscene.ron")));
    let wall = materials.add(StandardMaterial {
        base_color: Color::srgb(0.55, 0.52, 0.5),
        ..default()
    });
    let floor = materials.add(StandardMaterial {
        base_color: Color::srgb(0.3, 0.3, 0.33),
        ..default()
    });
    // Room: floor and three walls.
    commands.spawn((
        Mesh3d(meshes.add(Plane3d::default().mesh().size(2.0 * ROOM, 2.0 * ROOM))),
        MeshMaterial3d(floor),
    ));
    for (pos, size) in [
        (Vec3::new(0.0, 2.0, -ROOM), Vec3::new(2.0 * ROOM, 4.0, 0.2)),
        (Vec3::new(-ROOM, 2.0, 0.0), Vec3::new(0.2, 4.0, 2.0 * ROOM)),
        (Vec3::new(ROOM, 2.0, 0.0), Vec3::new(0.2, 4.0, 2.0 * ROOM)),
    ] {
        commands.spawn((
            Mesh3d(meshes.add(Cuboid::from_size(size))),
            MeshMaterial3d(wall.clone()),
            Transform::from_translation(pos),
        ));
    }
    // Screen 1: a window on the back wall; its prompt follows the clock.
    commands.spawn((
        Name::new("window"),
        WindowScreen,
        HeliosScreen::new(PromptWeights::one("day"))
            .with_seed(1)
            .with_crossfade(2),
        Mesh3d(meshes.add(Rectangle::new(4.8, 2.7))),
        MeshMaterial3d(materials.add(StandardMaterial::default())),
        Transform::from_xyz(0.0, 2.1, -ROOM + 0.12),
    ));
    // Screen 2: the mood screen on the left wall; calm far away, excited close up.
    commands.spawn((
        Name::new("mood"),
        MoodScreen,
        HeliosScreen::new(PromptWeights::one("calm"))
            .with_seed(2)
            .with_priority(StreamPriority::Foreground),
        Mesh3d(meshes.add(Rectangle::new(3.2, 2.2))),
        MeshMaterial3d(materials.add(StandardMaterial::default())),
        Transform::from_xyz(-ROOM + 0.12, 2.0, -1.0)
            .with_rotation(Quat::from_rotation_y(FRAC_PI_2)),
    ));
    // Screen 3: a small UI monitor (an ImageNode), background priority.
    commands.spawn((
        Name::new("monitor"),
        Node {
            position_type: PositionType::Absolute,
            right: Val::Px(12.0),
            top: Val::Px(12.0),
            width: Val::Px(128.0),
            height: Val::Px(128.0),
            ..default()
        },
        ImageNode::default(),
        HeliosScreen::new(PromptWeights::one("city").with("night", 0.3))
            .with_seed(3)
            .with_priority(StreamPriority::Background),
    ));
    // The player.
    commands.spawn((
        Player,
        Mesh3d(meshes.add(Capsule3d::new(0.3, 1.0))),
        MeshMaterial3d(materials.add(StandardMaterial {
            base_color: Color::srgb(0.9, 0.7, 0.2),
            ..default()
        })),
        Transform::from_xyz(2.0, 0.8, 3.5),
    ));
    // The cutscene zone and the two choice pillars next to it.
    commands.spawn((
        Zone { armed: true },
        Mesh3d(meshes.add(Cylinder::new(ZONE_RADIUS, 0.05))),
        MeshMaterial3d(materials.add(StandardMaterial {
            base_color: Color::srgb(0.2, 0.9, 0.5),
            emissive: LinearRgba::rgb(0.2, 2.0, 0.8),
            ..default()
        })),
        Transform::from_translation(ZONE + Vec3::Y * 0.03),
    ));
    for (choice, dx, color) in [
        (Choice::Hero, -0.6, Color::srgb(0.2, 0.4, 1.0)),
        (Choice::Villain, 0.6, Color::srgb(1.0, 0.2, 0.2)),
    ] {
        commands.spawn((
            ChoicePillar(choice),
            Mesh3d(meshes.add(Cuboid::new(0.3, 1.2, 0.3))),
            MeshMaterial3d(materials.add(StandardMaterial {
                base_color: color,
                ..default()
            })),
            Transform::from_translation(ZONE + Vec3::new(dx, 0.6, -1.6)),
        ));
    }
    commands.spawn((
        PointLight {
            intensity: 2_000_000.0,
            range: 30.0,
            ..default()
        },
        Transform::from_xyz(0.0, 5.5, 2.0),
    ));
    commands.spawn((
        Camera3d::default(),
        Transform::from_xyz(0.0, 6.5, 10.5).looking_at(Vec3::new(0.0, 1.5, -1.0), Vec3::Y),
    ));
    info!(
        "demo: WASD/arrows move, 1 = hero, 2 = villain, step on the green zone for the intro, Space skips"
    );
}

fn advance_clock(time: Res<Time>, mut clock: ResMut<GameClock>) {
    clock.0 = (clock.0 + time.delta_secs() * 24.0 / DAY_SECONDS) % 24.0;
}

/// The window: blend of the two time-of-day prompts around the clock, in steps of 0.1 so the prompt
/// changes a few times per in-game hour, not every frame.
fn window_prompt(clock: Res<GameClock>) -> Conditioning {
    const KEYS: [(f32, &str); 5] = [
        (6.0, "dawn"),
        (11.0, "day"),
        (18.0, "dusk"),
        (22.0, "night"),
        (30.0, "dawn"),
    ];
    let h = if clock.0 < 6.0 {
        clock.0 + 24.0
    } else {
        clock.0
    };
    let i = KEYS
        .windows(2)
        .position(|w| h >= w[0].0 && h < w[1].0)
        .unwrap_or(3);
    let ((a_h, a), (b_h, b)) = (KEYS[i], KEYS[i + 1]);
    let t = ((h - a_h) / (b_h - a_h) * 10.0).round() / 10.0;
    let prompt = if a == b || t <= 0.0 {
        PromptWeights::one(a)
    } else if t >= 1.0 {
        PromptWeights::one(b)
    } else {
        PromptWeights::one(a).with(a, 1.0 - t).with(b, t)
    };
    Conditioning::new(prompt)
}

/// The mood screen: excited weight grows as the player comes close (steps of 0.25).
fn mood_prompt(
    player: Query<&Transform, With<Player>>,
    screen: Query<&Transform, With<MoodScreen>>,
) -> Conditioning {
    let (Ok(p), Ok(s)) = (player.single(), screen.single()) else {
        return Conditioning::new(PromptWeights::one("calm"));
    };
    let closeness = (1.0 - p.translation.distance(s.translation) / MOOD_RANGE).clamp(0.0, 1.0);
    let excited = (closeness * 4.0).round() / 4.0;
    let prompt = match excited {
        0.0 => PromptWeights::one("calm"),
        1.0 => PromptWeights::one("excited"),
        e => PromptWeights::one("calm")
            .with("calm", 1.0 - e)
            .with("excited", e),
    };
    Conditioning::new(prompt)
}

fn move_player(
    keys: Res<ButtonInput<KeyCode>>,
    time: Res<Time>,
    args: Res<Args>,
    mood: Query<&Transform, (With<MoodScreen>, Without<Player>)>,
    mut player: Query<&mut Transform, With<Player>>,
) {
    let Ok(mut t) = player.single_mut() else {
        return;
    };
    let mut dir = Vec3::ZERO;
    for (keys_for, d) in [
        ([KeyCode::KeyW, KeyCode::ArrowUp], Vec3::NEG_Z),
        ([KeyCode::KeyS, KeyCode::ArrowDown], Vec3::Z),
        ([KeyCode::KeyA, KeyCode::ArrowLeft], Vec3::NEG_X),
        ([KeyCode::KeyD, KeyCode::ArrowRight], Vec3::X),
    ] {
        if keys.any_pressed(keys_for) {
            dir += d;
        }
    }
    if args.autopilot
        && let Ok(m) = mood.single()
    {
        let target = Vec3::new(m.translation.x + 1.2, t.translation.y, m.translation.z);
        let to = target - t.translation;
        if to.length() > 0.2 {
            dir = to;
        }
    }
    let step = dir.normalize_or_zero() * PLAYER_SPEED * time.delta_secs();
    t.translation = (t.translation + step).clamp(
        Vec3::new(-ROOM + 0.5, 0.8, -ROOM + 0.5),
        Vec3::new(ROOM - 0.5, 0.8, ROOM - 0.5),
    );
    if dir != Vec3::ZERO {
        t.rotation = Quat::from_rotation_y(f32::atan2(-dir.x, -dir.z) + PI);
    }
}

fn choose(keys: Res<ButtonInput<KeyCode>>, mut choice: ResMut<Choice>) {
    let new = if keys.just_pressed(KeyCode::Digit1) {
        Choice::Hero
    } else if keys.just_pressed(KeyCode::Digit2) {
        Choice::Villain
    } else {
        return;
    };
    if *choice != new {
        info!("demo: you chose {new:?}");
        *choice = new;
    }
}

fn show_choice(
    choice: Res<Choice>,
    pillars: Query<(&ChoicePillar, &MeshMaterial3d<StandardMaterial>)>,
    mut materials: ResMut<Assets<StandardMaterial>>,
) {
    if !choice.is_changed() {
        return;
    }
    for (pillar, material) in &pillars {
        if let Some(mut m) = materials.get_mut(&material.0) {
            let lit = pillar.0 == *choice;
            m.emissive = if lit {
                m.base_color.to_linear() * 4.0
            } else {
                LinearRgba::BLACK
            };
        }
    }
}

/// Stepping onto the zone plays the intro with the current choice (default hero); it re-arms when the
/// player leaves the zone.
fn enter_zone(
    player: Query<&Transform, With<Player>>,
    mut zone: Query<(Entity, &mut Zone)>,
    choice: Res<Choice>,
    intro: Res<Intro>,
    mut play: MessageWriter<PlayCutscene>,
) {
    let (Ok(p), Ok((zone_entity, mut zone))) = (player.single(), zone.single_mut()) else {
        return;
    };
    let inside =
        Vec2::new(p.translation.x - ZONE.x, p.translation.z - ZONE.z).length() < ZONE_RADIUS;
    if inside && zone.armed {
        zone.armed = false;
        let value = match *choice {
            Choice::Villain => "villain",
            Choice::Hero => "hero",
            Choice::None => {
                info!("demo: no choice made (press 1 or 2), playing the hero intro");
                "hero"
            }
        };
        play.write(
            PlayCutscene::new(intro.0.clone())
                .with_variable("choice", value)
                .with_target(zone_entity),
        );
    } else if !inside {
        zone.armed = true;
    }
}

fn skip(keys: Res<ButtonInput<KeyCode>>, mut skips: MessageWriter<SkipCutscene>) {
    if keys.just_pressed(KeyCode::Space) {
        skips.write(SkipCutscene);
    }
}

fn cutscene_finished(done: On<CutsceneFinished>) {
    info!(
        "demo: cutscene finished on {}: {:?}",
        done.entity, done.outcome
    );
}

/// Logs each change of the status' kind, and the generator's capacity once it is measured.
fn log_status(
    status: Res<HeliosStatus>,
    mut last: Local<Option<String>>,
    mut capacity_logged: Local<bool>,
) {
    if !status.is_changed() {
        return;
    }
    let kind = match &*status {
        HeliosStatus::Failed(e) => {
            format!("failed, the screens show the fallback: {e}")
        }
        HeliosStatus::Ready { provider, .. } => format!("ready on {}", provider.active),
        HeliosStatus::Degraded {
            provider, reason, ..
        } => {
            format!("degraded on {}: {reason}", provider.active)
        }
        other => format!("{other:?}"),
    };
    if last.as_ref() != Some(&kind) {
        info!("demo: helios {kind}");
        *last = Some(kind);
    }
    if let Some(capacity) = status.capacity()
        && !*capacity_logged
    {
        info!(
            "demo: the generator makes {:.1} frames/s: {:.2} screens at full rate",
            capacity.generated_fps, capacity.full_rate_streams
        );
        *capacity_logged = true;
    }
}

/// Scripted runs: counts frames from the moment every screen on screen shows video (or the model
/// failed), plays the intro if asked, takes the screenshots, and exits.
#[derive(Resource, Default)]
struct Script {
    started: Option<u32>,
    frame: u32,
    pending: u32,
    taken: u32,
    begun: Option<Instant>,
    ready_at: Option<Instant>,
    intro: IntroScript,
    final_shot: bool,
}

/// Where a scripted intro is.
#[derive(Default)]
enum IntroScript {
    /// None asked for, or not played yet.
    #[default]
    NotYet,
    /// Playing; a screenshot is due at this script frame once its first shot shows.
    Playing { shot_at: Option<u32> },
    /// Ended at this time, with each screen's frames shown then.
    Ended {
        at: Instant,
        shown: Vec<(Entity, u64)>,
    },
}

/// A screen the script waits for: one that is on screen and neither paused nor failed.
fn expects_video(stats: &HeliosStreamStats) -> bool {
    !matches!(
        stats.state,
        StreamState::Hidden | StreamState::Paused | StreamState::Failed
    )
}

type ScreenRow<'a> = (
    Entity,
    &'a Name,
    &'a HeliosStreamStats,
    Option<&'a GlobalTransform>,
    Option<&'a Mesh3d>,
);

#[expect(
    clippy::too_many_arguments,
    reason = "screens, camera, window and outputs"
)]
fn scripted_run(
    args: Res<Args>,
    mut script: ResMut<Script>,
    status: Res<HeliosStatus>,
    screens: Query<ScreenRow, With<HeliosScreen>>,
    meshes: Res<Assets<Mesh>>,
    camera: Query<(&Camera, &GlobalTransform)>,
    window: Query<&Window, With<PrimaryWindow>>,
    mut commands: Commands,
    mut exit: MessageWriter<AppExit>,
    (intro, mut play, mut skip): (
        Res<Intro>,
        MessageWriter<PlayCutscene>,
        MessageWriter<SkipCutscene>,
    ),
    (mut shots_started, mut finished): (
        MessageReader<CutsceneShotStarted>,
        MessageReader<CutsceneFinished>,
    ),
) {
    let Some(frames) = args.frames else { return };
    let begun = *script.begun.get_or_insert_with(Instant::now);
    if status.is_ready() && script.ready_at.is_none() {
        script.ready_at = Some(Instant::now());
    }
    script.frame += 1;
    let timeout = Duration::from_secs_f32(args.timeout);
    // Render pipelines compile asynchronously (seconds on a software rasteriser): give them frames.
    let video = screens.iter().any(|(.., s, _, _)| expects_video(s))
        && screens
            .iter()
            .filter(|(.., s, _, _)| expects_video(s))
            .all(|(.., s, _, _)| s.frames_shown > 0);
    let ready = script.frame >= WARMUP_FRAMES && (status.error().is_some() || video);
    if script.started.is_none() {
        if ready {
            info!(
                "demo: every screen shows video after {} frames ({:.1} s, {:.1} s after the model was ready)",
                script.frame,
                begun.elapsed().as_secs_f32(),
                script.ready_at.map_or(0.0, |r| r.elapsed().as_secs_f32())
            );
            script.started = Some(script.frame);
        } else if script.ready_at.unwrap_or(begun).elapsed() > timeout {
            let waiting: Vec<String> = screens
                .iter()
                .filter(|(.., s, _, _)| expects_video(s) && s.frames_shown == 0)
                .map(|(_, n, ..)| n.to_string())
                .collect();
            error!(
                "demo: video did not start within {} s of the model being ready ({} frames rendered, {WARMUP_FRAMES} needed; screens without video: {})",
                args.timeout,
                script.frame,
                if waiting.is_empty() {
                    "none".to_string()
                } else {
                    waiting.join(", ")
                }
            );
            exit.write(AppExit::from_code(2));
        }
        return;
    }
    let n = script.frame - script.started.unwrap_or(0);
    let mut shots: Vec<PathBuf> = args
        .screenshot_at
        .iter()
        .filter(|(f, _)| *f == n)
        .map(|(_, p)| p.clone())
        .collect();

    // The intro: play it, photograph it, skip the rest, then wait for every screen to move again.
    let ended = finished.read().count() > 0;
    let first_shot = shots_started.read().any(|s| s.shot == 0);
    match &mut script.intro {
        IntroScript::NotYet => {
            if let Some((at, choice)) = &args.intro_at
                && *at == n
            {
                info!("demo: scripted intro with choice {choice}");
                play.write(
                    PlayCutscene::new(intro.0.clone()).with_variable("choice", choice.clone()),
                );
                script.intro = IntroScript::Playing { shot_at: None };
            }
        }
        IntroScript::Playing { shot_at } => {
            if first_shot && shot_at.is_none() {
                *shot_at = Some(n + CUTSCENE_SHOT_DELAY);
            }
            if *shot_at == Some(n)
                && let Some(path) = &args.screenshot_cutscene
            {
                shots.push(path.clone());
            }
            if ended {
                info!("demo: the intro ended; waiting for every screen to show new frames");
                script.intro = IntroScript::Ended {
                    at: Instant::now(),
                    shown: screens
                        .iter()
                        .map(|(e, _, s, _, _)| (e, s.frames_shown))
                        .collect(),
                };
            } else if shot_at.is_some_and(|at| n > at + CUTSCENE_SHOT_DELAY) {
                // Photographed: the rest of the intro is the cutscene example's business.
                skip.write(SkipCutscene);
            }
        }
        IntroScript::Ended { .. } => {}
    }
    let resumed = match &script.intro {
        IntroScript::NotYet => args.intro_at.is_none(),
        IntroScript::Playing { .. } => false,
        IntroScript::Ended { at, shown } => {
            let moved = shown.iter().all(|(e, before)| {
                screens.get(*e).map_or(true, |(.., s, _, _)| {
                    !expects_video(s) || s.frames_shown > before + 1
                })
            });
            if !moved && at.elapsed() > timeout {
                error!(
                    "demo: screens did not show new frames within {} s after the intro",
                    args.timeout
                );
                exit.write(AppExit::from_code(2));
            }
            moved
        }
    };
    let last = n >= frames && resumed;
    if last && !script.final_shot {
        script.final_shot = true;
        shots.extend(args.screenshot.clone());
    }
    for path in shots {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        write_regions(&path, &screens, &meshes, &camera, &window);
        script.pending += 1;
        commands
            .spawn(Screenshot::primary_window())
            .observe(save_to_disk(path))
            .observe(|_: On<ScreenshotCaptured>, mut script: ResMut<Script>| {
                script.taken += 1;
            });
    }
    if last && script.taken >= script.pending {
        for (_, name, s, _, _) in &screens {
            info!(
                "demo: {name}: {:?}, {} frames shown, generated {:.1} fps, playing at {:.1} fps, frozen {:.1} s (longest {:.2} s)",
                s.state,
                s.frames_shown,
                s.generated_fps,
                s.playout_fps,
                s.frozen.as_secs_f32(),
                s.longest_freeze.as_secs_f32()
            );
        }
        info!("demo: scripted run done ({n} frames after video start)");
        exit.write(AppExit::Success);
    }
}

/// `--report-every`: one line per interval with the frames rendered and each screen's frames shown.
#[expect(
    clippy::print_stdout,
    reason = "the report is the demo's output for scripts"
)]
fn report(
    args: Res<Args>,
    frames: Res<FrameCount>,
    screens: Query<(&Name, &HeliosStreamStats), With<HeliosScreen>>,
    mut begun: Local<Option<Instant>>,
    mut reported: Local<u32>,
) {
    let Some(every) = args.report_every else {
        return;
    };
    let begun = *begun.get_or_insert_with(Instant::now);
    let t = begun.elapsed().as_secs_f32();
    if t < (*reported + 1) as f32 * every {
        return;
    }
    *reported = (t / every) as u32;
    let mut line = format!("demo report: t={t:.1} frames={}", frames.0);
    for (name, stats) in &screens {
        let key = name.as_str().replace(char::is_whitespace, "_");
        line.push_str(&format!(" {key}={}", stats.frames_shown));
    }
    println!("{line}");
}

/// Writes each in-world screen's rectangle in window pixels next to a screenshot, and every screen's
/// state and rates.
fn write_regions(
    path: &std::path::Path,
    screens: &Query<ScreenRow, With<HeliosScreen>>,
    meshes: &Assets<Mesh>,
    camera: &Query<(&Camera, &GlobalTransform)>,
    window: &Query<&Window, With<PrimaryWindow>>,
) {
    let Ok((camera, cam_t)) = camera.single() else {
        return;
    };
    let scale = window.single().map_or(1.0, |w| w.scale_factor());
    let mut stats = String::new();
    for (_, name, s, _, _) in screens {
        stats.push_str(&format!(
            "{} {:?} {} {:.2} {:.2} {:.0}\n",
            name,
            s.state,
            s.frames_shown,
            s.generated_fps,
            s.playout_fps,
            s.longest_freeze.as_secs_f64() * 1000.0
        ));
    }
    let stats_path = PathBuf::from(format!("{}.stats.txt", path.display()));
    if let Err(e) = std::fs::write(&stats_path, stats) {
        warn!("demo: cannot write {}: {e}", stats_path.display());
    }
    let mut out = String::new();
    for (_, name, _, transform, mesh) in screens {
        let (Some(t), Some(mesh)) = (transform, mesh) else {
            continue;
        };
        let Some(aabb) = meshes.get(&mesh.0).and_then(|m| m.compute_aabb()) else {
            continue;
        };
        let (min, max) = (Vec3::from(aabb.min()), Vec3::from(aabb.max()));
        let corners = [
            min,
            Vec3::new(max.x, min.y, min.z),
            Vec3::new(min.x, max.y, max.z),
            max,
        ];
        let points: Vec<Vec2> = corners
            .iter()
            .filter_map(|c| camera.world_to_viewport(cam_t, t.transform_point(*c)).ok())
            .map(|p| p * scale)
            .collect();
        if points.len() == 4 {
            let lo = points.iter().fold(Vec2::splat(f32::MAX), |a, p| a.min(*p));
            let hi = points.iter().fold(Vec2::splat(f32::MIN), |a, p| a.max(*p));
            out.push_str(&format!(
                "{} {} {} {} {}\n",
                name, lo.x as i32, lo.y as i32, hi.x as i32, hi.y as i32
            ));
        }
    }
    let regions = PathBuf::from(format!("{}.regions.txt", path.display()));
    if let Err(e) = std::fs::write(&regions, out) {
        warn!("demo: cannot write {}: {e}", regions.display());
    }
}
