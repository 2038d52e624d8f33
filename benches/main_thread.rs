//! Main-thread cost of `HeliosPlugin` per frame, with 1 and 8 screens playing, against the same App
//! without the plugin, measured in the same run. Time advances 1/60 s per update, but updates run
//! back to back, far faster than real time; so the worker replays one cached chunk (made once by the
//! pattern backend) instead of sampling, or it would need a core to itself and its load, not the
//! plugin's, would be measured. Frames still travel the whole path: channel, queue, playout, image.
//!
//! `cargo bench --bench main_thread` (target: ≤ 0.3 ms per frame more than the baseline with 8 screens).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use bevy_helios::backend::{HeliosBackend, HeliosGenerator, ModelInfo};
use bevy_helios::core::stream::{Chunk, GenerationState, StreamConfig};
use bevy_helios::diagnostics::MAIN_THREAD_MS;
use bevy_helios::prelude::*;
use criterion::{BenchmarkId, Criterion};

/// Prompts spread over the screens.
const PROMPTS: [&str; 8] = [
    "day", "dusk", "night", "dawn", "forest", "city", "ocean", "fire",
];
/// The target the README quotes.
const TARGET_MS: f64 = 0.3;

/// Marker the baseline app puts on the same entities instead of a screen.
#[derive(Component)]
struct Plain;

/// The pattern model's first chunk, replayed: each later chunk is a copy of its frames.
struct Replay {
    inner: Box<dyn HeliosGenerator>,
    frames: Option<Vec<Vec<u8>>>,
}

impl HeliosGenerator for Replay {
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
        let Some(frames) = &self.frames else {
            let chunk = self.inner.next_chunk(state)?;
            self.frames = Some(chunk.frames.clone());
            return Ok(chunk);
        };
        let info = self.inner.info();
        let chunk = Chunk {
            index: state.chunk_index,
            width: info.width,
            height: info.height,
            frames: frames.clone(),
            prompt: state.prompt.target.clone(),
            timings: Default::default(),
        };
        state.chunk_index += 1;
        Ok(chunk)
    }
    fn set_fast_start(&mut self, fast_start: bool) {
        self.inner.set_fast_start(fast_start);
    }
}

fn replay_backend() -> HeliosBackend {
    HeliosBackend::custom("replay", |req, progress| {
        let inner = HeliosBackend::pattern().load(req, progress)?;
        Ok(Box::new(Replay {
            inner,
            frames: None,
        }))
    })
}

fn app(screens: usize, with_plugin: bool) -> App {
    let mut app = App::new();
    app.add_plugins((MinimalPlugins, AssetPlugin::default()))
        .insert_resource(TimeUpdateStrategy::ManualDuration(Duration::from_secs_f64(
            1.0 / 60.0,
        )));
    if with_plugin {
        let settings = HeliosSettings {
            model_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/helios-tiny"),
            backend: replay_backend(),
            ..default()
        };
        app.add_plugins(HeliosPlugin::with_settings(settings));
    } else {
        app.init_asset::<Image>();
    }
    app.finish();
    app.cleanup();
    for i in 0..screens {
        let prompt = PromptWeights::one(PROMPTS[i % PROMPTS.len()]);
        if with_plugin {
            app.world_mut().spawn((
                HeliosScreen::new(prompt).with_seed(i as u64),
                Transform::default(),
            ));
        } else {
            app.world_mut().spawn((Plain, Transform::default()));
        }
    }
    // Plugins ready and every screen playing before anything is timed.
    let start = Instant::now();
    loop {
        app.update();
        let playing = app
            .world_mut()
            .query::<&HeliosStreamStats>()
            .iter(app.world())
            .filter(|s| s.frames_shown > 0)
            .count();
        if !with_plugin || playing == screens {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "screens did not start playing within 120 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    app
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("main_thread");
    for screens in [1usize, 8] {
        for with_plugin in [false, true] {
            let mut app = app(screens, with_plugin);
            let name = if with_plugin { "helios" } else { "baseline" };
            group.bench_function(BenchmarkId::new(name, screens), |b| {
                b.iter(|| black_box(&mut app).update())
            });
        }
    }
    group.finish();
}

/// Mean wall time of `app.update()` over `n` frames, and the plugin's own measure of its cost.
fn frame_ms(app: &mut App, n: u32) -> (f64, f64) {
    let start = Instant::now();
    let mut own = 0.0;
    for _ in 0..n {
        app.update();
        own += app
            .world()
            .get_resource::<bevy::diagnostic::DiagnosticsStore>()
            .and_then(|s| s.get(&MAIN_THREAD_MS))
            .and_then(|d| d.value())
            .unwrap_or(0.0);
    }
    (
        start.elapsed().as_secs_f64() * 1000.0 / f64::from(n),
        own / f64::from(n),
    )
}

#[expect(
    clippy::print_stdout,
    reason = "a bench reports its summary on the terminal"
)]
fn summary(frames: u32) {
    println!(
        "\nmain-thread cost per frame ({frames} frames each, baseline measured in the same run)"
    );
    println!(
        "{:>8} {:>13} {:>13} {:>10} {:>7} {:>16}",
        "screens", "baseline ms", "helios ms", "diff ms", "ratio", "self-measured ms"
    );
    for screens in [1usize, 8] {
        let mut base = app(screens, false);
        let mut helios = app(screens, true);
        // Interleave to share the machine's noise.
        let (mut b, mut h, mut own) = (0.0, 0.0, 0.0);
        for _ in 0..4 {
            b += frame_ms(&mut base, frames / 4).0;
            let (hm, om) = frame_ms(&mut helios, frames / 4);
            h += hm;
            own += om;
        }
        let (b, h, own) = (b / 4.0, h / 4.0, own / 4.0);
        let verdict = if screens == 8 {
            if h - b <= TARGET_MS {
                "  (≤ 0.3 ms: ok)"
            } else {
                "  (> 0.3 ms target)"
            }
        } else {
            ""
        };
        println!(
            "{screens:>8} {b:>13.4} {h:>13.4} {:>10.4} {:>7.2} {own:>16.4}{verdict}",
            h - b,
            h / b.max(1e-9)
        );
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    summary(if full { 4000 } else { 40 });
}
