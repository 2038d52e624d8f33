//! Checks a model's denoiser graphs on a GPU provider against the CPU provider, stage by stage, on the
//! same seeded inputs, and times each stage's forward on the GPU. Made for the `com.helios` fused operators
//! (`docs/fused-ops.md`): their CUDA kernels must compute what their CPU kernels compute.
//!
//! Look at: one line per stage with the largest difference (absolute, and relative to the largest
//! reference value) and the GPU forward time; the exit status is non-zero when a stage differs by more
//! than `--tolerance` (relative).
//!
//! ```sh
//! cargo build --release --no-default-features --example fused_check
//! target/release/examples/fused_check --model tests/fixtures/helios-tiny-fused --provider cuda
//! ```
//!
//! Flags:
//! - `--model DIR`       model directory (default `tests/fixtures/helios-tiny-fused`)
//! - `--provider P`      the provider to check: `cuda` (default) or `cpu` (checks the CPU against itself)
//! - `--seed N`          seed of the inputs (default 0)
//! - `--timestep T`      ⌊t⌋ given to every stage (default 500)
//! - `--reps N`          timed forwards per stage on the checked provider (default 10)
//! - `--tolerance X`     largest accepted max-abs difference over max |CPU value| (default 1e-4)
//!
//! The CUDA kernels use 16-byte accesses where rows allow; `HELIOS_FUSED_SCALAR=1` forces the scalar
//! variants so both are checked.
#![expect(clippy::print_stdout, reason = "a command-line tool reports on stdout")]

use std::path::PathBuf;
use std::time::Instant;

use bevy_helios::core::manifest::ModelManifest;
use bevy_helios::core::runtime::{CudaOptions, DeviceLoopMode, OrtModel, Provider, RuntimeConfig};
use bevy_helios::core::sampler::history::HistoryTerms;
use bevy_helios::core::sampler::noise::SeededNoise;
use bevy_helios::core::sampler::{Denoiser, DenoiserInput};
use ndarray::{Array3, Array5};

type Error = Box<dyn std::error::Error>;

struct Args {
    model: PathBuf,
    provider: String,
    seed: u64,
    timestep: i64,
    reps: usize,
    tolerance: f64,
}

fn parse_args() -> Result<Args, Error> {
    let mut a = Args {
        model: PathBuf::from("tests/fixtures/helios-tiny-fused"),
        provider: "cuda".into(),
        seed: 0,
        timestep: 500,
        reps: 10,
        tolerance: 1e-4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => a.model = PathBuf::from(value()?),
            "--provider" => a.provider = value()?,
            "--seed" => a.seed = value()?.parse()?,
            "--timestep" => a.timestep = value()?.parse()?,
            "--reps" => a.reps = value()?.parse()?,
            "--tolerance" => a.tolerance = value()?.parse()?,
            other => return Err(format!("unknown flag {other} (see the file's header)").into()),
        }
    }
    Ok(a)
}

fn random5(noise: &mut SeededNoise, shape: [usize; 5]) -> Array5<f32> {
    Array5::from_shape_fn(shape, |_| noise.normal() as f32)
}

fn main() -> Result<(), Error> {
    let args = parse_args()?;
    let manifest = ModelManifest::load(&args.model)?;
    let checked = match args.provider.as_str() {
        "cuda" => Provider::Cuda(CudaOptions::default()),
        "cpu" => Provider::Cpu,
        other => return Err(format!("--provider cuda|cpu, not {other}").into()),
    };
    let config = |provider: Provider| RuntimeConfig {
        providers: vec![provider],
        device_loop: DeviceLoopMode::Off,
        ..RuntimeConfig::default()
    };
    let mut reference = OrtModel::load(&args.model, &manifest, &config(Provider::Cpu))?;
    let mut model = OrtModel::load(&args.model, &manifest, &config(checked))?;
    println!(
        "model `{}` {}x{}: CPU vs {}",
        manifest.name,
        manifest.width,
        manifest.height,
        model.provider()
    );

    let (h, w) = manifest.latent_hw();
    let c = manifest.latent_channels;
    let [long, mid, _] = [
        manifest.history_sizes[0],
        manifest.history_sizes[1],
        manifest.history_sizes[2],
    ];
    let mut noise = SeededNoise::new(args.seed);
    let history = HistoryTerms {
        short: random5(&mut noise, [1, c, 2, h, w]),
        mid: random5(&mut noise, [1, c, mid, h, w]),
        long: random5(&mut noise, [1, c, long, h, w]),
    };
    let text = Array3::from_shape_fn(
        (1, manifest.embeddings.seq_len, manifest.embeddings.dim),
        |_| noise.normal() as f32,
    );
    let mut worst = 0.0f64;
    for stage in 0..manifest.scheduler.stages {
        let (hs, ws) = manifest.stage_hw(stage);
        let sample = random5(&mut noise, [1, c, manifest.latent_frames_per_chunk, hs, ws]);
        let input = DenoiserInput {
            stage,
            sample: &sample,
            timestep: args.timestep,
            text: &text,
            history: &history,
        };
        let want = reference.velocity(&input)?;
        let got = model.velocity(&input)?;
        let scale = want.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
        let max_abs = want
            .iter()
            .zip(got.iter())
            .fold(0.0f64, |m, (a, b)| m.max(f64::from((a - b).abs())));
        let rel = max_abs / scale.max(1e-30);
        worst = worst.max(rel);
        let t = Instant::now();
        for _ in 0..args.reps {
            model.velocity(&input)?;
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / args.reps.max(1) as f64;
        println!(
            "stage {stage} ({hs}x{ws}): max abs {max_abs:.3e} (max |ref| {scale:.3}, relative {rel:.3e}); \
             forward {ms:.3} ms on {} (host I/O included)",
            model.provider().active
        );
    }
    if worst > args.tolerance {
        return Err(format!(
            "FAIL: a stage differs by {worst:.3e} of its largest value (tolerance {:.1e})",
            args.tolerance
        )
        .into());
    }
    println!(
        "PASS: every stage within {:.1e} (worst {worst:.3e})",
        args.tolerance
    );
    Ok(())
}
