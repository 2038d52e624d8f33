//! One helios-tiny chunk on the CPU provider, against the same loop with no-op networks: the second is
//! the sampler's own cost per chunk (noise, pyramid resampling, renoise, DMD updates, history ring,
//! prompt blend, RGBA conversion) without any ONNX Runtime call. Prints the ratio (target < 1 %).
//!
//! `cargo bench --bench sampler`
#![expect(clippy::print_stdout, reason = "a bench reports its ratio on stdout")]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bevy_helios::core::embedding::EmbeddingBank;
use bevy_helios::core::manifest::ModelManifest;
use bevy_helios::core::model::HeliosModel;
use bevy_helios::core::sampler::{Decoder, Denoiser, DenoiserInput};
use bevy_helios::prelude::*;
use criterion::{BatchSize, Criterion};
use ndarray::Array5;

/// Networks that return zeros of the right shape: only the sampler's own work remains.
struct NoopNets {
    video: (usize, usize, usize, usize, usize),
}

impl Denoiser for NoopNets {
    fn velocity(&mut self, input: &DenoiserInput<'_>) -> Result<Array5<f32>, HeliosError> {
        Ok(Array5::zeros(input.sample.raw_dim()))
    }
}

impl Decoder for NoopNets {
    fn decode(&mut self, _latents: &Array5<f32>) -> Result<Array5<f32>, HeliosError> {
        Ok(Array5::zeros(self.video))
    }
}

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/helios-tiny")
}

fn noop_model() -> HeliosModel<NoopNets> {
    let manifest = ModelManifest::load(&model_dir()).expect("models/helios-tiny manifest");
    let bank = EmbeddingBank::load(
        &model_dir().join(&manifest.embeddings.file),
        manifest.embeddings.seq_len,
        manifest.embeddings.dim,
    )
    .expect("helios-tiny bank");
    let video = (
        1,
        3,
        manifest.frames_per_chunk(),
        manifest.height,
        manifest.width,
    );
    HeliosModel::with_networks(manifest, bank, NoopNets { video })
}

/// A stream one chunk in (so the timed chunk is a steady, non-amplified one).
fn warm_state<N: Denoiser + Decoder>(model: &mut HeliosModel<N>) -> GenerationState {
    let mut state = model
        .new_stream(&StreamConfig::new(PromptWeights::one("day"), 1))
        .expect("stream");
    model.next_chunk(&mut state).expect("first chunk");
    state
}

fn median_secs<N: Denoiser + Decoder>(
    model: &mut HeliosModel<N>,
    state: &GenerationState,
    runs: usize,
) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let mut s = state.clone();
            let t = Instant::now();
            black_box(model.next_chunk(&mut s).expect("chunk"));
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

fn main() {
    let mut real =
        HeliosModel::load(model_dir(), &RuntimeConfig::cpu()).expect("load helios-tiny on CPU");
    let real_state = warm_state(&mut real);
    let mut noop = noop_model();
    let noop_state = warm_state(&mut noop);

    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(10));
    let mut group = c.benchmark_group("helios-tiny");
    group.sample_size(20);
    group.bench_function("chunk_cpu", |b| {
        b.iter_batched(
            || real_state.clone(),
            |mut s| real.next_chunk(&mut s).expect("chunk"),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("sampler_overhead_noop_networks", |b| {
        b.iter_batched(
            || noop_state.clone(),
            |mut s| noop.next_chunk(&mut s).expect("chunk"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
    c.final_summary();

    // Same run, same machine: the ratio the issue asks for.
    let chunk = median_secs(&mut real, &real_state, 15);
    let overhead = median_secs(&mut noop, &noop_state, 15);
    let frames = real.manifest().frames_per_chunk() as f64;
    println!(
        "helios-tiny CPU chunk: {:.1} ms ({:.1} generated frames/s); sampler overhead without ort: {:.3} ms = {:.2} % of a chunk",
        chunk * 1e3,
        frames / chunk,
        overhead * 1e3,
        100.0 * overhead / chunk
    );
}
