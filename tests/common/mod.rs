//! Shared helpers for the integration tests: fixture loading and tensor comparison.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped tiny model.
pub fn tiny_model_dir() -> PathBuf {
    root().join("models/helios-tiny")
}

/// A tensor from a fixture, widened to f64.
#[derive(Clone, Debug)]
pub struct FixtureTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

impl FixtureTensor {
    pub fn to_f32(&self) -> Vec<f32> {
        self.values.iter().map(|v| *v as f32).collect()
    }
}

/// The recorded draws of chunks `0..chunks` of a diffusers fixture (`chunk{k}.draw.*`), in the order the
/// sampler consumes them: latent noise, then block noise of stages 1 and 2.
pub fn fixture_noise(
    fixture: &BTreeMap<String, FixtureTensor>,
    chunks: u64,
) -> bevy_helios::core::sampler::noise::InjectedNoise {
    use bevy_helios::core::sampler::noise::{DrawKind, InjectedNoise};
    let mut noise = InjectedNoise::default();
    for k in 0..chunks {
        noise.push(
            DrawKind::LatentNoise,
            fixture[&format!("chunk{k}.draw.latent_noise")].to_f32(),
        );
        for s in 1..3 {
            noise.push(
                DrawKind::BlockNoise { stage: s },
                fixture[&format!("chunk{k}.draw.block_noise_stage{s}")].to_f32(),
            );
        }
    }
    noise
}

/// Loads every tensor of a safetensors fixture (F32, F64, I64, U8).
pub fn load_fixture(
    path: &Path,
) -> Result<BTreeMap<String, FixtureTensor>, Box<dyn std::error::Error>> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("fixture {} unreadable: {e}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f64> = match view.dtype() {
            safetensors::Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            safetensors::Dtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::I64 => data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            safetensors::Dtype::U8 => data.iter().map(|b| *b as f64).collect(),
            other => {
                return Err(
                    format!("fixture tensor {name} has unsupported dtype {other:?}").into(),
                );
            }
        };
        out.insert(
            name,
            FixtureTensor {
                shape: view.shape().to_vec(),
                values,
            },
        );
    }
    Ok(out)
}

/// Max |a − b| and max |b|.
pub fn max_abs_diff(a: impl IntoIterator<Item = f64>, b: &[f64]) -> (f64, f64) {
    let mut err = 0f64;
    let mut scale = 0f64;
    for (x, y) in a.into_iter().zip(b) {
        err = err.max((x - y).abs());
        scale = scale.max(y.abs());
    }
    (err, scale)
}

/// Bevy test apps: `MinimalPlugins` + `AssetPlugin` over an in-memory directory + `HeliosPlugin`,
/// manual time, and a wall-clock-bounded `update_until` (a real worker thread runs).
#[cfg(feature = "plugin")]
pub mod app {
    use std::time::{Duration, Instant};

    use bevy::asset::io::memory::{Dir, MemoryAssetReader};
    use bevy::asset::io::{AssetSourceBuilder, AssetSourceId};
    use bevy::prelude::*;
    use bevy::time::TimeUpdateStrategy;
    use bevy_helios::backend::HeliosBackend;
    use bevy_helios::prelude::*;

    /// One playout frame at 24 fps: each update makes exactly one frame due.
    pub fn frame() -> Duration {
        Duration::from_secs_f64(1.0 / 24.0)
    }

    /// Settings for the tiny model's manifest and bank with the synthetic pattern networks.
    pub fn pattern_settings() -> HeliosSettings {
        HeliosSettings {
            model_dir: super::tiny_model_dir(),
            backend: HeliosBackend::pattern(),
            ..default()
        }
    }

    /// A finished test app and its in-memory asset directory.
    pub fn test_app(settings: HeliosSettings) -> (App, Dir) {
        let mut app = App::new();
        let dir = Dir::default();
        let reader_dir = dir.clone();
        app.register_asset_source(
            AssetSourceId::Default,
            AssetSourceBuilder::new(move || {
                Box::new(MemoryAssetReader {
                    root: reader_dir.clone(),
                })
            }),
        )
        .add_plugins((
            MinimalPlugins,
            AssetPlugin {
                watch_for_changes_override: Some(false),
                use_asset_processor_override: Some(false),
                ..default()
            },
            HeliosPlugin::with_settings(settings),
        ))
        .insert_resource(TimeUpdateStrategy::ManualDuration(frame()));
        app.finish();
        app.cleanup();
        (app, dir)
    }

    /// Updates until `pred` holds or `deadline` of wall time passes; returns the number of updates.
    pub fn update_until(
        app: &mut App,
        deadline: Duration,
        mut pred: impl FnMut(&mut World) -> bool,
    ) -> Result<u32, String> {
        let start = Instant::now();
        let mut n = 0;
        loop {
            app.update();
            n += 1;
            if pred(app.world_mut()) {
                return Ok(n);
            }
            if start.elapsed() > deadline {
                return Err(format!(
                    "condition not reached after {n} updates ({deadline:?} of wall time)"
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Collects every message of type `M` written so far (call once per update).
    #[derive(Default)]
    pub struct Collected<M: Message + Clone> {
        pub items: Vec<M>,
        cursor: Option<bevy::ecs::message::MessageCursor<M>>,
    }

    impl<M: Message + Clone> Collected<M> {
        pub fn new() -> Self {
            Self {
                items: Vec::new(),
                cursor: None,
            }
        }

        pub fn poll(&mut self, world: &World) {
            let messages = world.resource::<Messages<M>>();
            let cursor = self.cursor.get_or_insert_with(|| messages.get_cursor());
            self.items.extend(cursor.read(messages).cloned());
        }
    }

    /// The stream state and stats of a screen.
    pub fn screen(world: &World, e: Entity) -> (&HeliosStream, &HeliosStreamStats) {
        let stream = world
            .get::<HeliosStream>(e)
            .expect("screen entity has HeliosStream (required by HeliosScreen)");
        let stats = world
            .get::<HeliosStreamStats>(e)
            .expect("screen entity has HeliosStreamStats");
        (stream, stats)
    }

    /// The pixels currently in a screen's image.
    pub fn screen_pixels(world: &World, e: Entity) -> Vec<u8> {
        let (stream, _) = screen(world, e);
        let images = world.resource::<Assets<Image>>();
        images
            .get(stream.image())
            .and_then(|i| i.data.clone())
            .unwrap_or_default()
    }
}
