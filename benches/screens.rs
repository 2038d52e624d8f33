//! Screens under overload on the real model: helios-nano through ONNX Runtime on the CPU, 1, 3 and 8
//! screens of mixed priority and size in a headless app (MinimalPlugins, real time, ~60 updates a
//! second), each run for a fixed time after every screen has shown its first frame. Prints, per screen,
//! the chunks it got, its sustained generated FPS, the FPS it showed, its playout rate and its longest
//! freeze, plus the measured generator rate; no pass or fail.
//!
//! ```sh
//! cargo bench --bench screens                  # 20 s a configuration
//! HELIOS_BENCH_SECONDS=60 cargo bench --bench screens
//! ```
#![expect(clippy::print_stdout, reason = "a bench reports on stdout")]

use std::time::{Duration, Instant};

use bevy::asset::AssetPlugin;
use bevy::camera::primitives::Aabb;
use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use bevy_helios::prelude::*;
use bevy_helios::worker::GeneratorLoad;

/// One app update every this long (a 60 Hz game).
const FRAME: Duration = Duration::from_millis(16);
/// Longest wait for the model and every screen's first frame.
const START_LIMIT: Duration = Duration::from_secs(120);
const PRIORITIES: [StreamPriority; 3] = [
    StreamPriority::Normal,
    StreamPriority::Foreground,
    StreamPriority::Background,
];

fn run(n: usize, seconds: f64) -> Result<(), String> {
    let mut app = App::new();
    let settings = HeliosSettings {
        providers: vec![Provider::Cpu],
        ..HeliosSettings::default()
    };
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin::default(),
        HeliosPlugin::with_settings(settings),
    ))
    .insert_resource(TimeUpdateStrategy::Automatic);
    app.finish();
    app.cleanup();
    app.world_mut()
        .spawn((Camera::default(), GlobalTransform::default()));
    let screens: Vec<Entity> = (0..n)
        .map(|i| {
            let distance = [4.0, 2.0, 8.0, 3.0][i % 4];
            app.world_mut()
                .spawn((
                    HeliosScreen::new(PromptWeights::one(["day", "night", "forest"][i % 3]))
                        .with_seed(i as u64)
                        .with_priority(PRIORITIES[i % 3]),
                    GlobalTransform::from_translation(Vec3::new(0.0, 0.0, -distance)),
                    Aabb::from_min_max(Vec3::new(-0.5, -0.5, 0.0), Vec3::new(0.5, 0.5, 0.0)),
                ))
                .id()
        })
        .collect();
    let tick = |app: &mut App| {
        let t = Instant::now();
        app.update();
        std::thread::sleep(FRAME.saturating_sub(t.elapsed()));
    };
    let started = Instant::now();
    loop {
        let world = app.world();
        if let Some(e) = world.resource::<HeliosStatus>().error() {
            return Err(format!("the model failed: {e}"));
        }
        if screens.iter().all(|&e| {
            world
                .get::<HeliosStreamStats>(e)
                .is_some_and(|s| s.frames_shown > 0)
        }) {
            break;
        }
        if started.elapsed() > START_LIMIT {
            return Err(format!(
                "{n} screens: no video on every screen within {START_LIMIT:?}"
            ));
        }
        tick(&mut app);
    }
    let first_video = started.elapsed();
    let stats = |app: &App| -> Vec<HeliosStreamStats> {
        screens
            .iter()
            .filter_map(|&e| app.world().get::<HeliosStreamStats>(e).cloned())
            .collect()
    };
    let before = stats(&app);
    let window = Instant::now();
    while window.elapsed().as_secs_f64() < seconds {
        tick(&mut app);
    }
    let span = window.elapsed().as_secs_f64();
    let after = stats(&app);
    let world = app.world();
    let load = world.resource::<GeneratorLoad>();
    let playout = world.resource::<HeliosSettings>().playout_fps;
    println!(
        "\n{n} screen(s), {span:.0} s after every screen showed video ({:.1} s from start); generator {:.1} frames/s = {:.2} screens at {playout} fps",
        first_video.as_secs_f32(),
        load.generated_fps().unwrap_or(0.0),
        load.generated_fps().unwrap_or(0.0) / playout
    );
    println!(
        "| screen | priority | size | chunks | generated fps | shown fps | playing at | share | frozen | longest freeze | first frame |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, ((b, a), &e)) in before.iter().zip(&after).zip(&screens).enumerate() {
        let size = world
            .get::<HeliosStream>(e)
            .map_or(0.0, HeliosStream::apparent_size);
        println!(
            "| {i} | {:?} | {size:.2} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} s | {:.2} s | {:.2} s |",
            PRIORITIES[i % 3],
            a.chunks - b.chunks,
            a.generated_fps,
            (a.frames_shown - b.frames_shown) as f64 / span,
            a.playout_fps,
            a.share_fps,
            (a.frozen - b.frozen).as_secs_f32(),
            a.longest_freeze.as_secs_f32(),
            a.first_frame_latency.map_or(0.0, |d| d.as_secs_f32()),
        );
    }
    Ok(())
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and wants a quick pass.
    if !std::env::args().any(|a| a == "--bench") {
        println!("screens bench: run with `cargo bench --bench screens`");
        return;
    }
    let seconds: f64 = std::env::var("HELIOS_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20.0);
    for n in [1, 3, 8] {
        if let Err(e) = run(n, seconds) {
            println!("{n} screens: {e}");
            std::process::exit(1);
        }
    }
}
