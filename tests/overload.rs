//! Overload, as with the real model: generation slower than playout. A generator of fixed, known speed
//! (the pattern networks held to a set wall time per chunk) serves 1, 3 and 8 screens of mixed priority
//! and size through the real worker thread and plugin. Every screen must show video soon, receive chunks
//! in proportion to its weight (within 20 %), and never hold a frame longer than its share explains.
//!
//! Time runs 10x faster than a game's so that half a minute holds hundreds of chunks: screens play at
//! 240 fps against 300 generated frames a second (the ratio of 30 to 24), with a 80 fps floor.
#![cfg(feature = "plugin")]

mod common;

use std::time::{Duration, Instant};

use bevy::camera::primitives::Aabb;
use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use bevy_helios::backend::{HeliosBackend, HeliosGenerator, ModelInfo};
use bevy_helios::core::embedding::PromptWeights;
use bevy_helios::core::stream::{Chunk, GenerationState, StreamConfig};
use bevy_helios::prelude::*;
use bevy_helios::worker::GeneratorLoad;
use common::app::*;

/// Frames a chunk of helios-tiny holds.
const FRAMES_PER_CHUNK: f64 = 33.0;
/// Generated frames per second, all screens together.
const GENERATED_FPS: f64 = 300.0;
/// Playout rate and floor (10x a game's 24 and 8).
const PLAYOUT_FPS: f32 = 240.0;
const MIN_PLAYOUT_FPS: f32 = 80.0;

/// Holds another generator to `chunk_time` of wall time per chunk.
struct Paced {
    inner: Box<dyn HeliosGenerator>,
    chunk_time: Duration,
}

impl HeliosGenerator for Paced {
    fn info(&self) -> ModelInfo {
        self.inner.info()
    }
    fn new_stream(&mut self, config: &StreamConfig) -> Result<GenerationState, HeliosError> {
        self.inner.new_stream(config)
    }
    fn check_prompt(&self, weights: &PromptWeights) -> Result<(), HeliosError> {
        self.inner.check_prompt(weights)
    }
    fn next_chunk(&mut self, state: &mut GenerationState) -> Result<Chunk, HeliosError> {
        let started = Instant::now();
        let chunk = self.inner.next_chunk(state);
        if let Some(rest) = self.chunk_time.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
        chunk
    }
    fn set_fast_start(&mut self, fast_start: bool) {
        self.inner.set_fast_start(fast_start);
    }
}

fn paced_settings() -> HeliosSettings {
    let chunk_time = Duration::from_secs_f64(FRAMES_PER_CHUNK / GENERATED_FPS);
    HeliosSettings {
        backend: HeliosBackend::custom("paced pattern", move |request, progress| {
            let inner = HeliosBackend::pattern().load(request, progress)?;
            Ok(Box::new(Paced { inner, chunk_time }))
        }),
        playout_fps: PLAYOUT_FPS,
        min_playout_fps: MIN_PLAYOUT_FPS,
        // The stream's first chunk costs what the others do here.
        fast_start: true,
        ..pattern_settings()
    }
}

const PRIORITIES: [StreamPriority; 3] = [
    StreamPriority::Normal,
    StreamPriority::Foreground,
    StreamPriority::Background,
];

/// Runs `n` screens for `seconds` after each has shown its first frame and checks the shares.
fn overload(n: usize, seconds: f64) -> Result<(), String> {
    let (mut app, _dir) = test_app(paced_settings());
    app.insert_resource(TimeUpdateStrategy::Automatic);
    app.world_mut()
        .spawn((Camera::default(), GlobalTransform::default()));
    let screens: Vec<Entity> = (0..n)
        .map(|i| {
            // Mixed sizes: the same quad at different distances from the camera.
            let distance = [4.0, 2.0, 8.0, 3.0][i % 4];
            app.world_mut()
                .spawn((
                    HeliosScreen::new(PromptWeights::one("day"))
                        .with_seed(i as u64)
                        .with_priority(PRIORITIES[i % 3]),
                    GlobalTransform::from_translation(Vec3::new(0.0, 0.0, -distance)),
                    Aabb::from_min_max(Vec3::new(-0.5, -0.5, 0.0), Vec3::new(0.5, 0.5, 0.0)),
                ))
                .id()
        })
        .collect();
    let started = Instant::now();
    let tick = |app: &mut App| {
        app.update();
        std::thread::sleep(Duration::from_millis(2));
    };
    // Every screen shows video within a round of first chunks (plus loading and slack).
    let first_round =
        Duration::from_secs_f64(3.0 + 2.0 * n as f64 * FRAMES_PER_CHUNK / GENERATED_FPS);
    while screens
        .iter()
        .any(|&e| screen(app.world(), e).1.frames_shown == 0)
    {
        if started.elapsed() > first_round {
            let shown: Vec<u64> = screens
                .iter()
                .map(|&e| screen(app.world(), e).1.frames_shown)
                .collect();
            return Err(format!(
                "{n} screens: not every screen showed video within {first_round:?}: frames shown {shown:?}"
            ));
        }
        tick(&mut app);
    }
    // Let the measured rate settle, then count chunks over the window.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(2) {
        tick(&mut app);
    }
    let chunks_at = |app: &App| -> Vec<u64> {
        screens
            .iter()
            .map(|&e| screen(app.world(), e).1.chunks)
            .collect()
    };
    let before = chunks_at(&app);
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs_f64(seconds) {
        tick(&mut app);
    }
    let after = chunks_at(&app);
    let got: Vec<f64> = after
        .iter()
        .zip(&before)
        .map(|(a, b)| (a - b) as f64)
        .collect();
    let weights: Vec<f64> = screens
        .iter()
        .enumerate()
        .map(|(i, &e)| {
            let size = f64::from(screen(app.world(), e).0.apparent_size());
            PRIORITIES[i % 3].weight() * (1.0 + size)
        })
        .collect();
    let world = app.world();
    let load = world.resource::<GeneratorLoad>();
    let shares: Vec<f64> = screens
        .iter()
        .map(|&e| {
            screen(world, e)
                .0
                .stream_id()
                .and_then(|id| load.schedule().rate(id))
                .map_or(0.0, |r| f64::from(r.share_fps))
        })
        .collect();
    let report = format!(
        "{n} screens: chunks {got:?}, weights {weights:.2?}, shares {shares:.1?} fps, generator {:?} fps",
        load.generated_fps()
    );
    eprintln!("overload: {report}");
    let generated = f64::from(load.generated_fps().unwrap_or(0.0));
    assert!(
        (0.6 * GENERATED_FPS..=1.1 * GENERATED_FPS).contains(&generated),
        "the measured generator rate is near the paced one: {report}"
    );
    let status = world.resource::<HeliosStatus>();
    let capacity = status.capacity().ok_or("status reports no capacity")?;
    assert!(
        (capacity.full_rate_streams - capacity.generated_fps / PLAYOUT_FPS).abs() < 1e-3
            && capacity.full_rate_streams > 0.7,
        "status reports about {:.2} screens at full rate: {capacity:?}",
        GENERATED_FPS / f64::from(PLAYOUT_FPS)
    );

    let total_got: f64 = got.iter().sum();
    // Shares are capped at the playout rate: compare with the water-filled shares where a screen is
    // capped, with the weights otherwise (uncapped shares are proportional to the weights).
    let uncapped: Vec<usize> = (0..n)
        .filter(|&i| shares[i] < f64::from(PLAYOUT_FPS) - 1e-3)
        .collect();
    if uncapped.len() > 1 {
        let got_sum: f64 = uncapped.iter().map(|&i| got[i]).sum();
        let w_sum: f64 = uncapped.iter().map(|&i| weights[i]).sum();
        for &i in &uncapped {
            let ratio = (got[i] / got_sum) / (weights[i] / w_sum);
            assert!(
                (0.8..=1.2).contains(&ratio),
                "screen {i} got {ratio:.2}x its weighted share of chunks: {report}"
            );
        }
    }
    assert!(total_got > 0.0, "chunks arrived: {report}");
    for (i, &e) in screens.iter().enumerate() {
        let stats = screen(world, e).1;
        let share = shares[i].max(1.0);
        // Below the floor a screen plays a chunk at the floor rate and holds until its next one.
        let bound = FRAMES_PER_CHUNK / share + 3.0 * FRAMES_PER_CHUNK / GENERATED_FPS + 0.25;
        assert!(
            stats.longest_freeze.as_secs_f64() < bound,
            "screen {i} held a frame {:?}, more than its share explains ({bound:.2} s): {report}",
            stats.longest_freeze
        );
        if n == 1 {
            assert_eq!(
                stats.playout_fps, PLAYOUT_FPS,
                "one screen, a generator faster than playout: full rate ({report})"
            );
        }
        assert!(
            stats.playout_fps >= MIN_PLAYOUT_FPS && stats.playout_fps <= PLAYOUT_FPS,
            "screen {i} plays within the floor and the full rate: {} fps",
            stats.playout_fps
        );
    }
    Ok(())
}

#[test]
fn screens_share_a_slow_generator_by_weight() -> Result<(), String> {
    // One after the other: the paced generator's speed is only fixed while the CPU is free.
    overload(1, 4.0)?;
    overload(3, 12.0)?;
    overload(8, 30.0)
}
