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

/// Tolerance for f32 graphs on the CPU provider: ONNX Runtime's fused kernels reorder f32 sums, which
/// moves a transformer output by ~1e-6 of its magnitude (the export tool measured 2-3e-6 on a single
/// call); over 24 calls and 3 chunks of history feedback this stays far below 1e-4 relative.
const F32_REL_TOL: f64 = 1e-4;

/// Compares what the sampler reports against the fixture, name by name.
struct ParityObserver<'a> {
    fixture: &'a BTreeMap<String, FixtureTensor>,
    /// name → (max abs error, max |reference|)
    errors: BTreeMap<String, (f64, f64)>,
    failures: Vec<String>,
}

impl ParityObserver<'_> {
    fn check(&mut self, name: &str, shape: &[usize], values: impl Iterator<Item = f64>, tol_rel: f64) {
        let Some(reference) = self.fixture.get(name) else { return };
        if reference.shape != shape {
            self.failures.push(format!("{name}: shape {shape:?}, reference {:?}", reference.shape));
            return;
        }
        let (err, scale) = max_abs_diff(values, &reference.values);
        if !(err <= tol_rel * scale.max(1.0)) {
            self.failures.push(format!("{name}: max abs error {err:.3e} (max |ref| {scale:.3e})"));
        }
        self.errors.insert(name.to_string(), (err, scale));
    }
}

impl SamplerObserver for ParityObserver<'_> {
    fn tensor(&mut self, name: &str, value: &Array5<f32>) {
        self.check(name, value.shape(), value.iter().map(|v| *v as f64), F32_REL_TOL);
    }

    fn timestep(&mut self, name: &str, value: i64) {
        // integer: must be exact
        self.check(name, &[1], std::iter::once(value as f64), 0.0);
    }

    fn schedule(&mut self, name: &str, timesteps: &[f64], sigmas: &[f64], mu: f64) {
        // f64 schedule arithmetic in the same order as numpy: equal to the last bits
        self.check(&format!("{name}.timesteps"), &[timesteps.len()], timesteps.iter().copied(), 1e-12);
        self.check(&format!("{name}.sigmas"), &[sigmas.len()], sigmas.iter().copied(), 1e-12);
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
    let (err, _) = max_abs_diff(day.iter().map(|v| *v as f64), &fixture["prompt_embeds"].values);
    assert_eq!(err, 0.0, "bank entry `day` should equal the fixture's prompt_embeds");

    let mut noise = InjectedNoise::default();
    for k in 0..3 {
        noise.push(DrawKind::LatentNoise, fixture[&format!("chunk{k}.draw.latent_noise")].to_f32());
        for s in 1..3 {
            noise.push(
                DrawKind::BlockNoise { stage: s },
                fixture[&format!("chunk{k}.draw.block_noise_stage{s}")].to_f32(),
            );
        }
    }

    let mut state = model.new_stream(&StreamConfig::new(PromptWeights::one("day"), 42))?;
    let mut observer = ParityObserver { fixture: &fixture, errors: BTreeMap::new(), failures: Vec::new() };
    let mut frames = Vec::new();
    for _ in 0..3 {
        let chunk = model.next_chunk_with(&mut state, &mut noise, &mut observer)?;
        frames.extend(chunk.frames);
    }
    assert_eq!(noise.remaining(), 0, "the sampler should consume exactly the pipeline's draws");

    // Final uint8 frames: the pipeline trims 99 → 97 frames at the end.
    let reference = &fixture["frames"];
    let n = reference.shape[0];
    let (h, w) = (reference.shape[1], reference.shape[2]);
    let mut worst = 0f64;
    let mut off = 0usize;
    for f in 0..n {
        for p in 0..h * w {
            for c in 0..3 {
                let ours = frames[f][p * 4 + c] as f64;
                let theirs = reference.values[(f * h * w + p) * 3 + c];
                worst = worst.max((ours - theirs).abs());
                off += usize::from(ours != theirs);
            }
        }
    }

    // Report: max error per chunk and stage (run with --nocapture to see it).
    let mut per_stage: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for (name, (err, scale)) in &observer.errors {
        let mut parts = name.split('.');
        let key = match (parts.next(), parts.next()) {
            (Some(c), Some(s)) if s.starts_with("stage") => format!("{c}.{s}"),
            (Some(c), Some(x)) => format!("{c}.{x}"),
            _ => name.clone(),
        };
        let e = per_stage.entry(key).or_insert((0.0, 0.0));
        e.0 = e.0.max(*err);
        e.1 = e.1.max(*scale);
    }
    eprintln!("parity: {} tensors compared", observer.errors.len());
    for (key, (err, scale)) in &per_stage {
        eprintln!("  {key:<24} max abs err {err:.3e}  (max |ref| {scale:.3e})");
    }
    eprintln!("  frames: {off} of {} channel values differ, by at most {worst}", n * h * w * 3);

    assert!(observer.failures.is_empty(), "tensors differ from diffusers:\n{}", observer.failures.join("\n"));
    assert!(observer.errors.len() > 150, "expected every step of 3 chunks to be compared, got {}", observer.errors.len());
    for must in ["chunk0.stage2.step3.velocity", "chunk2.result", "chunk2.video", "chunk1.stage1.block_noise"] {
        assert!(observer.errors.contains_key(must), "{must} was not compared");
    }
    // Rounding to uint8 may flip a value that sits on a .5 boundary; anything more is a real error.
    assert!(worst <= 1.0, "frames differ by up to {worst} levels");
    assert!(off * 10_000 <= n * h * w * 3, "{off} frame values differ: more than 0.01 %");
    Ok(())
}
