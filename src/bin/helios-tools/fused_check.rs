//! `helios-tools fused-check`: checks a model's denoiser graphs on a GPU provider against the CPU provider, stage by stage, on the
//! same seeded inputs, and times each stage's forward on the GPU. Made for the `com.helios` fused operators
//! (`docs/fused-ops.md`): their CUDA kernels must compute what their CPU kernels compute.
//!
//! Look at: one line per stage with the largest difference (absolute, and relative to the largest
//! reference value) and the GPU forward time; the exit status is non-zero when a stage differs by more
//! than `--tolerance` (relative).
//!
//! ```sh
//! cargo build --release --no-default-features --features tools --bin helios-tools
//! target/release/helios-tools fused-check --model tests/fixtures/helios-tiny-fused --provider cuda
//! ```
//!
//! The CUDA kernels use 16-byte accesses where rows allow; `HELIOS_FUSED_SCALAR=1` forces the scalar
//! variants so both are checked.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use bevy_helios::core::manifest::ModelManifest;
use bevy_helios::core::runtime::{CudaOptions, DeviceLoopMode, OrtModel, Provider, RuntimeConfig};
use bevy_helios::core::sampler::history::HistoryTerms;
use bevy_helios::core::sampler::noise::SeededNoise;
use bevy_helios::core::sampler::{Denoiser, DenoiserInput};
use ndarray::{Array3, Array5};

type Error = Box<dyn std::error::Error>;

/// Flags of `fused-check`.
#[derive(clap::Args, Debug)]
#[command(args_override_self = true)]
pub struct Args {
    /// Model directory.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "tests/fixtures/helios-tiny-fused"
    )]
    model: PathBuf,
    /// The provider to check: `cuda`, or `cpu` (checks the CPU against itself).
    #[arg(long, value_name = "P", default_value = "cuda")]
    provider: String,
    /// Seed of the inputs.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// ⌊t⌋ given to every stage.
    #[arg(
        long,
        value_name = "T",
        default_value_t = 500,
        allow_negative_numbers = true
    )]
    timestep: i64,
    /// Timed forwards per stage on the checked provider.
    #[arg(long, value_name = "N", default_value_t = 10)]
    reps: usize,
    /// Largest accepted max-abs difference over max |CPU value|.
    #[arg(long, value_name = "X", default_value_t = 1e-4)]
    tolerance: f64,
}

fn random5(noise: &mut SeededNoise, shape: [usize; 5]) -> Array5<f32> {
    Array5::from_shape_fn(shape, |_| noise.normal() as f32)
}

/// Runs the check: exit status 1 (`Error: ...` on stderr) when a stage is out of tolerance or fails.
pub fn run(args: Args) -> ExitCode {
    match check(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // What `main` returning the error printed before.
            eprintln!("Error: {e:?}");
            ExitCode::from(1)
        }
    }
}

fn check(args: &Args) -> Result<(), Error> {
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
