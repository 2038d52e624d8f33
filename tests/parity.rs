//! Parity with diffusers 0.42.1: the Rust sampler on `models/helios-tiny`, fed the draws that
//! `HeliosPyramidPipeline` made, must reproduce the pipeline's tensors at every stage and step, the chunk
//! latents, the decoded video and the final uint8 frames (fixture: `tools/export/make_fixtures.py`).

mod common;

use std::collections::BTreeMap;

use bevy_helios::core::model::HeliosModel;
use bevy_helios::core::runtime::RuntimeConfig;
use bevy_helios::core::sampler::SamplerObserver;
use bevy_helios::core::sampler::noise::{DrawKind, InjectedNoise};
use bevy_helios::prelude::*;
use common::{FixtureTensor, load_fixture, max_abs_diff};
use ndarray::Array5;

/// Tolerance for f32 graphs on the CPU provider, relative to max(1, max |reference|): ONNX Runtime's
/// fused kernels reorder f32 sums, which moves one transformer output by ~1e-6 of its magnitude (the export
/// tool measured 2-3e-6 on a single call). Measured over 24 calls and 3 chunks of history feedback: at most
/// 5.2e-6 absolute on values up to 5.4, i.e. ~1e-6 relative; 2e-5 leaves a 4x margin and still catches
/// any algorithmic slip (a wrong σ, a missed rounding or a misplaced block-noise value is >= 1e-3).
const F32_REL_TOL: f64 = 2e-5;

/// Compares what the sampler reports against the fixture, name by name.
struct ParityObserver<'a> {
    fixture: &'a BTreeMap<String, FixtureTensor>,
    /// name → (max abs error, max |reference|)
    errors: BTreeMap<String, (f64, f64)>,
    failures: Vec<String>,
}

impl ParityObserver<'_> {
    fn check(
        &mut self,
        name: &str,
        shape: &[usize],
        values: impl Iterator<Item = f64>,
        tol_rel: f64,
    ) {
        let Some(reference) = self.fixture.get(name) else {
            return;
        };
        if reference.shape != shape {
            self.failures.push(format!(
                "{name}: shape {shape:?}, reference {:?}",
                reference.shape
            ));
            return;
        }
        let (err, scale) = max_abs_diff(values, &reference.values);
        if err.is_nan() || err > tol_rel * scale.max(1.0) {
            self.failures.push(format!(
                "{name}: max abs error {err:.3e} (max |ref| {scale:.3e})"
            ));
        }
        self.errors.insert(name.to_string(), (err, scale));
    }
}

impl ParityObserver<'_> {
    /// Prints the max error per chunk and stage (run with --nocapture), then fails on any mismatch.
    fn report(&self, label: &str) {
        let mut per_stage: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for (name, (err, scale)) in &self.errors {
            // schedules and timesteps are exact-compared; keep them out of the tensor table
            if name.ends_with("timestep")
                || name.ends_with("timesteps")
                || name.ends_with("sigmas")
                || name.ends_with(".mu")
            {
                continue;
            }
            let mut parts = name.split('.');
            let key = match (parts.next(), parts.next()) {
                (Some(c), Some(x)) => format!("{c}.{x}"),
                _ => name.clone(),
            };
            let e = per_stage.entry(key).or_insert((0.0, 0.0));
            e.0 = e.0.max(*err);
            e.1 = e.1.max(*scale);
        }
        let schedule_err = self
            .errors
            .iter()
            .filter(|(n, _)| {
                n.ends_with("timesteps")
                    || n.ends_with("sigmas")
                    || n.ends_with(".mu")
                    || n.ends_with("timestep")
            })
            .map(|(_, (e, _))| *e)
            .fold(0.0, f64::max);
        eprintln!(
            "parity {label}: {} tensors compared; schedule/timestep max abs err {schedule_err:.3e}",
            self.errors.len()
        );
        for (key, (err, scale)) in &per_stage {
            eprintln!("  {key:<24} max abs err {err:.3e}  (max |ref| {scale:.3e})");
        }
        assert!(
            self.failures.is_empty(),
            "{label}: tensors differ from diffusers:\n{}",
            self.failures.join("\n")
        );
    }
}

impl SamplerObserver for ParityObserver<'_> {
    fn tensor(&mut self, name: &str, value: &Array5<f32>) {
        self.check(
            name,
            value.shape(),
            value.iter().map(|v| *v as f64),
            F32_REL_TOL,
        );
    }

    fn timestep(&mut self, name: &str, value: i64) {
        // integer: must be exact
        self.check(name, &[1], std::iter::once(value as f64), 0.0);
    }

    fn schedule(&mut self, name: &str, timesteps: &[f64], sigmas: &[f64], mu: f64) {
        // f64 schedule arithmetic in the same order as numpy: equal to the last bits
        self.check(
            &format!("{name}.timesteps"),
            &[timesteps.len()],
            timesteps.iter().copied(),
            1e-12,
        );
        self.check(
            &format!("{name}.sigmas"),
            &[sigmas.len()],
            sigmas.iter().copied(),
            1e-12,
        );
        self.check(&format!("{name}.mu"), &[1], std::iter::once(mu), 1e-12);
    }
}

#[test]
fn t2v_three_chunks_match_diffusers() -> Result<(), Box<dyn std::error::Error>> {
    let fixture = load_fixture(&common::root().join("tests/fixtures/helios-tiny/t2v.safetensors"))?;
    let mut model = HeliosModel::load(common::tiny_model_dir(), &RuntimeConfig::cpu())?;
    assert_eq!(model.provider().active, "CPU");

    // The fixture ran with the bank entry "day": our blend of it must be the very same embedding.
    let day = model.bank().blend(&PromptWeights::one("day"))?;
    let (err, _) = max_abs_diff(
        day.iter().map(|v| *v as f64),
        &fixture["prompt_embeds"].values,
    );
    assert_eq!(
        err, 0.0,
        "bank entry `day` should equal the fixture's prompt_embeds"
    );

    let mut noise = common::fixture_noise(&fixture, 3);

    let mut state = model.new_stream(&StreamConfig::new(PromptWeights::one("day"), 42))?;
    let mut observer = ParityObserver {
        fixture: &fixture,
        errors: BTreeMap::new(),
        failures: Vec::new(),
    };
    let mut frames = Vec::new();
    for _ in 0..3 {
        let chunk = model.next_chunk_with(&mut state, &mut noise, &mut observer)?;
        frames.extend(chunk.frames);
    }
    assert_eq!(
        noise.remaining(),
        0,
        "the sampler should consume exactly the pipeline's draws"
    );

    // Final uint8 frames: the pipeline trims 99 → 97 frames at the end.
    let reference = &fixture["frames"];
    let (n, h, w) = (reference.shape[0], reference.shape[1], reference.shape[2]);
    let (off, worst) = compare_frames(&frames, reference);

    observer.report("t2v");
    eprintln!(
        "  frames: {off} of {} channel values differ, by at most {worst}",
        n * h * w * 3
    );
    assert!(
        observer.errors.len() > 150,
        "expected every step of 3 chunks to be compared, got {}",
        observer.errors.len()
    );
    for must in [
        "chunk0.stage2.step3.velocity",
        "chunk2.result",
        "chunk2.video",
        "chunk1.stage1.block_noise",
    ] {
        assert!(
            observer.errors.contains_key(must),
            "{must} was not compared"
        );
    }
    // Rounding to uint8 may flip a value that sits on a .5 boundary; anything more is a real error.
    assert!(worst <= 1.0, "frames differ by up to {worst} levels");
    assert!(
        off * 10_000 <= n * h * w * 3,
        "{off} frame values differ: more than 0.01 %"
    );
    Ok(())
}

/// Compares decoded frames with the fixture's uint8 frames; returns (values that differ, max difference).
fn compare_frames(frames: &[Vec<u8>], reference: &FixtureTensor) -> (usize, f64) {
    let (n, h, w) = (reference.shape[0], reference.shape[1], reference.shape[2]);
    let mut worst = 0f64;
    let mut off = 0usize;
    for (f, frame) in frames.iter().enumerate().take(n) {
        for p in 0..h * w {
            for c in 0..3 {
                let ours = frame[p * 4 + c] as f64;
                let theirs = reference.values[(f * h * w + p) * 3 + c];
                worst = worst.max((ours - theirs).abs());
                off += usize::from(ours != theirs);
            }
        }
    }
    (off, worst)
}

#[test]
fn i2v_chunk_matches_diffusers() -> Result<(), Box<dyn std::error::Error>> {
    let dir = common::root().join("tests/fixtures/helios-tiny");
    let fixture = load_fixture(&dir.join("i2v.safetensors"))?;
    let mut model = HeliosModel::load(common::tiny_model_dir(), &RuntimeConfig::cpu())?;
    let image = image::open(dir.join("i2v_input.png"))?.to_rgba8();

    // Draw order of the reference I2V path: two posterior samples (image, still clip), then
    // (uniform σ, normal) for the image latent and for the fake latent, then the chunk's three draws.
    let kinds = [
        DrawKind::Posterior,
        DrawKind::Posterior,
        DrawKind::Uniform,
        DrawKind::ConditioningNoise,
        DrawKind::Uniform,
        DrawKind::ConditioningNoise,
        DrawKind::LatentNoise,
        DrawKind::BlockNoise { stage: 1 },
        DrawKind::BlockNoise { stage: 2 },
    ];
    let mut noise = InjectedNoise::default();
    for (j, kind) in kinds.into_iter().enumerate() {
        noise.push(kind, fixture[&format!("draw{j}")].to_f32());
    }
    let mut state = model.new_stream(&StreamConfig::new(PromptWeights::one("day"), 42))?;
    model.condition_on_image_with(
        &mut state,
        image.as_raw(),
        image.width(),
        image.height(),
        &mut noise,
    )?;
    let mut observer = ParityObserver {
        fixture: &fixture,
        errors: BTreeMap::new(),
        failures: Vec::new(),
    };
    let chunk = model.next_chunk_with(&mut state, &mut noise, &mut observer)?;
    assert_eq!(
        noise.remaining(),
        0,
        "I2V should consume exactly the pipeline's draws"
    );
    observer.report("i2v");
    for must in [
        "chunk0.history.short",
        "chunk0.stage2.step3.velocity",
        "chunk0.video",
    ] {
        assert!(
            observer.errors.contains_key(must),
            "{must} was not compared"
        );
    }
    let (off, worst) = compare_frames(&chunk.frames, &fixture["frames"]);
    eprintln!("  i2v frames: {off} values differ, by at most {worst}");
    assert!(
        worst <= 1.0 && off * 10_000 <= chunk.frames.len() * 64 * 64 * 3,
        "{off} values differ by up to {worst}"
    );
    Ok(())
}

/// The graphs exported for a device-resident loop (downsample, renoise, DMD step) must compute what
/// the Rust CPU path computes.
#[test]
fn gpu_helper_graphs_agree_with_the_rust_math() -> Result<(), Box<dyn std::error::Error>> {
    use bevy_helios::core::manifest::{DType, ModelManifest};
    use bevy_helios::core::runtime::OrtModel;
    use bevy_helios::core::sampler::noise::{NoiseSource, SeededNoise};
    use bevy_helios::core::sampler::pyramid;
    use bevy_helios::core::sampler::schedule::PyramidSchedule;

    let dir = common::tiny_model_dir();
    let manifest = ModelManifest::load(&dir)?;
    let mut ort = OrtModel::load(&dir, &manifest, &RuntimeConfig::cpu())?;
    let mut rng = SeededNoise::new(5);
    let mut randn =
        |shape: (usize, usize, usize, usize, usize)| -> Result<Array5<f32>, HeliosError> {
            let mut a = Array5::<f32>::zeros(shape);
            rng.fill(DrawKind::LatentNoise, a.as_slice_mut().unwrap())?;
            Ok(a)
        };
    let close = |name: &str, a: &ndarray::ArrayD<f32>, b: &Array5<f32>| {
        assert_eq!(a.shape(), b.shape(), "{name} shape");
        let (err, _) = max_abs_diff(
            a.iter().map(|v| *v as f64),
            &b.iter().map(|v| *v as f64).collect::<Vec<_>>(),
        );
        assert!(err < 1e-5, "{name}: graph and Rust differ by {err}");
    };

    let (h, w) = manifest.latent_hw();
    let eps = randn((1, 16, 9, h, w))?;
    let out = ort
        .open_extra("pyramid_downsample")?
        .run_f32(&[("noise", eps.view().into_dyn())])?;
    close(
        "pyramid_downsample",
        &out["start"],
        &pyramid::downsample_start(&eps, 2),
    );

    let schedule = PyramidSchedule::new(&manifest.scheduler);
    for stage in 1..3 {
        let (hs, ws) = manifest.stage_hw(stage);
        let x0 = randn((1, 16, 9, hs / 2, ws / 2))?;
        let z = randn((1, 1, 1, 16 * 9 * (hs / 2) * (ws / 2), 4))?;
        let zv = z
            .view()
            .into_shape_with_order((16 * 9 * (hs / 2) * (ws / 2), 4))?
            .into_dyn();
        let key = format!("pyramid_renoise_stage{stage}");
        let out = ort
            .open_extra(&key)?
            .run_f32(&[("x0", x0.view().into_dyn()), ("z", zv)])?;
        let up = pyramid::upsample_nearest(&x0);
        let block = pyramid::block_noise(
            z.as_slice().unwrap(),
            &manifest.block_noise_cholesky,
            up.dim(),
        );
        let (alpha, beta) = schedule.renoise(stage);
        close(
            &key,
            &out["start"],
            &pyramid::renoise(&up, &block, alpha, beta, DType::F32),
        );
    }

    for stage in 0..3 {
        let (hs, ws) = manifest.stage_hw(stage);
        let (x, v, s) = (
            randn((1, 16, 9, hs, ws))?,
            randn((1, 16, 9, hs, ws))?,
            randn((1, 16, 9, hs, ws))?,
        );
        let (sigma, sigma_next) = (ndarray::arr1(&[0.8f32]), ndarray::arr1(&[0.3f32]));
        let key = format!("dmd_step_stage{stage}");
        let out = ort.open_extra(&key)?.run_f32(&[
            ("sample", x.view().into_dyn()),
            ("velocity", v.view().into_dyn()),
            ("start", s.view().into_dyn()),
            ("sigma", sigma.view().into_dyn()),
            ("sigma_next", sigma_next.view().into_dyn()),
        ])?;
        let (x0, next) = pyramid::dmd_step(
            &x,
            &v,
            &s,
            0.8f32 as f64,
            Some(0.3f32 as f64),
            DType::F32,
            DType::F32,
        );
        close(&format!("{key}.x0"), &out["x0"], &x0);
        close(&format!("{key}.next"), &out["next"], &next.unwrap());
    }
    Ok(())
}
