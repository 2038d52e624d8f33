//! The device-resident loop on the CPU provider (IoBinding with host memory runs the same code as CUDA):
//! it must give what the host sampler gives, match the diffusers fixture, keep stream state exact across
//! save/restore and interleaved streams, and allocate nothing of its own per step.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bevy_helios::core::manifest::ModelManifest;
use bevy_helios::core::model::HeliosModel;
use bevy_helios::core::runtime::device_loop::missing_graphs;
use bevy_helios::core::runtime::{DeviceLoopMode, RuntimeConfig};
use bevy_helios::core::sampler::noise::SeededNoise;
use bevy_helios::core::sampler::{Denoiser, SamplerObserver, SamplerOptions};
use bevy_helios::prelude::*;
use common::{load_fixture, max_abs_diff};
use ndarray::Array5;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Counts this thread's heap allocations (other test threads and ONNX Runtime's own C++ threads do not
/// count; ONNX Runtime's C++ allocations do not go through Rust's allocator at all).
struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-initialised thread-local Cell.
#[expect(
    unsafe_code,
    reason = "a counting global allocator needs `unsafe impl GlobalAlloc`"
)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// helios-tiny, which ships the device-loop graphs (history_push, history_slices, vae_decoder_rgba8).
fn device_model(_tag: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let tiny = common::tiny_model_dir();
    let missing = missing_graphs(&ModelManifest::load(&tiny)?);
    assert!(missing.is_empty(), "helios-tiny lacks {missing:?}");
    Ok(tiny)
}

fn config(mode: DeviceLoopMode) -> RuntimeConfig {
    RuntimeConfig {
        device_loop: mode,
        ..RuntimeConfig::cpu()
    }
}

/// Max |a − b| over the windows of two histories, and the max |b|.
fn history_diff(a: &GenerationState, b: &GenerationState) -> (f64, f64) {
    let wa = a.history.window();
    let wb = b.history.window();
    let wb: Vec<f64> = wb.iter().map(|v| *v as f64).collect();
    max_abs_diff(wa.iter().map(|v| *v as f64), &wb)
}

/// (values that differ, largest difference) between two chunk lists' frames.
fn frame_diff(a: &[Chunk], b: &[Chunk]) -> (usize, u8) {
    let mut off = 0;
    let mut worst = 0u8;
    for (ca, cb) in a.iter().zip(b) {
        assert_eq!(ca.frames.len(), cb.frames.len(), "frames per chunk");
        for (fa, fb) in ca.frames.iter().zip(&cb.frames) {
            for (x, y) in fa.iter().zip(fb) {
                let d = x.abs_diff(*y);
                off += usize::from(d != 0);
                worst = worst.max(d);
            }
        }
    }
    (off, worst)
}

fn chunks(
    model: &mut HeliosModel,
    state: &mut GenerationState,
    n: usize,
) -> Result<Vec<Chunk>, HeliosError> {
    (0..n).map(|_| model.next_chunk(state)).collect()
}

#[test]
fn device_loop_gives_what_the_host_loop_gives() -> TestResult {
    let dir = device_model("same")?;
    let mut device = HeliosModel::load(&dir, &config(DeviceLoopMode::On))?;
    let mut host = HeliosModel::load(&dir, &config(DeviceLoopMode::Off))?;
    assert_eq!(device.networks_mut().device_loop_note(), "device loop on");
    assert!(device.networks_mut().chunk_runner().is_some());
    assert!(host.networks_mut().chunk_runner().is_none());
    for amplify in [true, false] {
        let options = SamplerOptions {
            amplify_first_chunk: amplify,
        };
        device.set_sampler_options(options.clone());
        host.set_sampler_options(options);
        let cfg = StreamConfig::new(PromptWeights::one("day"), 11);
        let (mut a, mut b) = (device.new_stream(&cfg)?, host.new_stream(&cfg)?);
        let (ca, cb) = (
            chunks(&mut device, &mut a, 3)?,
            chunks(&mut host, &mut b, 3)?,
        );
        let (err, scale) = history_diff(&a, &b);
        let (off, worst) = frame_diff(&ca, &cb);
        eprintln!(
            "amplify {amplify}: history max abs diff {err:.3e} (max |x| {scale:.2}), {off} frame values \
             differ by at most {worst}"
        );
        // f32 on the same provider: only ONNX Runtime's reordering of sums differs (see tests/parity.rs).
        assert!(
            err <= 2e-5 * scale.max(1.0),
            "device and host histories differ by {err}"
        );
        assert!(worst <= 1, "frames differ by {worst} levels");
        assert!(
            off * 10_000 <= 3 * 33 * 64 * 64 * 4,
            "{off} frame values differ"
        );
        assert_eq!(a.chunk_index, 3);
        assert_eq!(a.noise, b.noise, "both loops must consume the same draws");
        assert_eq!(
            a.history.anchor().is_some(),
            b.history.anchor().is_some(),
            "anchor capture"
        );
    }
    Ok(())
}

/// Observes only what the device loop reports: the chunk latents.
struct ResultObserver<'a> {
    fixture: &'a BTreeMap<String, common::FixtureTensor>,
    worst: f64,
    compared: usize,
}

impl SamplerObserver for ResultObserver<'_> {
    fn tensor(&mut self, name: &str, value: &Array5<f32>) {
        if let Some(reference) = self.fixture.get(name) {
            assert_eq!(reference.shape, value.shape(), "{name} shape");
            let (err, scale) = max_abs_diff(value.iter().map(|v| *v as f64), &reference.values);
            self.worst = self.worst.max(err / scale.max(1.0));
            self.compared += 1;
        }
    }
}

#[test]
fn device_loop_matches_the_diffusers_fixture() -> TestResult {
    let fixture = load_fixture(&common::root().join("tests/fixtures/helios-tiny/t2v.safetensors"))?;
    let dir = device_model("fixture")?;
    let mut model = HeliosModel::load(&dir, &config(DeviceLoopMode::On))?;
    let mut noise = common::fixture_noise(&fixture, 3);
    let mut state = model.new_stream(&StreamConfig::new(PromptWeights::one("day"), 42))?;
    let mut observer = ResultObserver {
        fixture: &fixture,
        worst: 0.0,
        compared: 0,
    };
    let mut frames = Vec::new();
    for _ in 0..3 {
        frames.extend(
            model
                .next_chunk_with(&mut state, &mut noise, &mut observer)?
                .frames,
        );
    }
    assert_eq!(
        noise.remaining(),
        0,
        "the device loop must take exactly the pipeline's draws"
    );
    assert_eq!(
        observer.compared, 3,
        "each chunk's latents should be compared"
    );
    eprintln!(
        "device loop vs diffusers: chunk latents max rel err {:.3e}",
        observer.worst
    );
    assert!(
        observer.worst <= 2e-5,
        "chunk latents differ by {}",
        observer.worst
    );
    let reference = &fixture["frames"];
    let (n, h, w) = (reference.shape[0], reference.shape[1], reference.shape[2]);
    let mut off = 0;
    for (f, frame) in frames.iter().enumerate().take(n) {
        for p in 0..h * w {
            for c in 0..3 {
                let d = (frame[p * 4 + c] as f64 - reference.values[(f * h * w + p) * 3 + c]).abs();
                assert!(d <= 1.0, "frame {f} pixel {p} differs by {d}");
                off += usize::from(d != 0.0);
            }
        }
    }
    assert!(off * 10_000 <= n * h * w * 3, "{off} frame values differ");
    Ok(())
}

#[test]
fn interleaved_and_restored_streams_stay_exact() -> TestResult {
    let dir = device_model("interleave")?;
    let mut model = HeliosModel::load(&dir, &config(DeviceLoopMode::On))?;
    let cfg_a = StreamConfig::new(PromptWeights::one("day"), 1);
    let cfg_b = StreamConfig::new(PromptWeights::one("night"), 2);
    // Straight: A three times, then B three times.
    let mut a = model.new_stream(&cfg_a)?;
    let straight_a = chunks(&mut model, &mut a, 3)?;
    let mut b = model.new_stream(&cfg_b)?;
    let straight_b = chunks(&mut model, &mut b, 3)?;
    // Interleaved: A, B, A, B, A, B — each switch re-uploads the other stream's history.
    let (mut a2, mut b2) = (model.new_stream(&cfg_a)?, model.new_stream(&cfg_b)?);
    let (mut ia, mut ib) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        ia.push(model.next_chunk(&mut a2)?);
        ib.push(model.next_chunk(&mut b2)?);
    }
    assert_eq!(
        frame_diff(&straight_a, &ia),
        (0, 0),
        "stream A must not see B's history"
    );
    assert_eq!(
        frame_diff(&straight_b, &ib),
        (0, 0),
        "stream B must not see A's history"
    );
    assert_eq!(a, a2, "interleaving must leave the same state");

    // Save after one chunk, run on, restore and run again: the same bytes.
    let mut s = model.new_stream(&cfg_a)?;
    model.next_chunk(&mut s)?;
    let saved = s.to_ron()?;
    let on = chunks(&mut model, &mut s, 2)?;
    let mut restored = model.restore(&saved)?;
    let again = chunks(&mut model, &mut restored, 2)?;
    assert_eq!(
        frame_diff(&on, &again),
        (0, 0),
        "a restored stream must continue exactly"
    );
    let stats = model
        .networks_mut()
        .device_loop_stats()
        .ok_or("device loop stats")?;
    eprintln!("{stats:?}");
    assert!(
        stats.history_uploads >= 8,
        "every switch should upload the history"
    );
    Ok(())
}

#[test]
fn hot_loop_allocates_nothing_of_its_own() -> TestResult {
    let dir = device_model("alloc")?;
    let mut model = HeliosModel::load(&dir, &config(DeviceLoopMode::On))?;
    let sampler = model.sampler().clone();
    let text = model.bank().blend(&PromptWeights::one("day"))?;
    let mut state = model.new_stream(&StreamConfig::new(PromptWeights::one("day"), 3))?;
    let mut noise = SeededNoise::new(3);
    let runner = model
        .networks_mut()
        .chunk_runner()
        .ok_or("the device loop should be on")?;
    // Chunk 0 (amplified) and chunk 1 warm up ort's copy sessions and the mirror.
    for k in 0..2 {
        runner.run_chunk(&sampler, k, &text, &mut state.history, &mut noise)?;
    }
    let chunks = 4u64;
    let before = allocations();
    for k in 2..2 + chunks {
        runner.run_chunk(&sampler, k, &text, &mut state.history, &mut noise)?;
    }
    let per_chunk = (allocations() - before) / chunks;
    let stats = model
        .networks_mut()
        .device_loop_stats()
        .ok_or("device loop stats")?;
    let runs_per_chunk = stats.runs / stats.chunks;
    let copies = (stats.uploads + stats.downloads) / stats.chunks;
    eprintln!(
        "steady chunk: {per_chunk} heap allocations, {runs_per_chunk} graph runs, ~{copies} host copies \
         ({stats:?})"
    );
    // Every allocation left is inside ort's wrappers: `run_binding` wraps each bound output in new
    // handles, and `copy_into` (4 copies per chunk here) builds a small key per call. The loop's own
    // code allocates nothing per step; this bound catches any per-element or per-step Vec.
    assert!(
        per_chunk <= 12 * runs_per_chunk + 40 * copies,
        "{per_chunk} allocations per chunk is more than ort's wrappers make"
    );
    Ok(())
}

#[test]
fn modes_and_missing_graphs() -> TestResult {
    let tiny = common::tiny_model_dir();
    let manifest = ModelManifest::load(&tiny)?;
    let missing = missing_graphs(&manifest);
    let model = HeliosModel::load(&tiny, &config(DeviceLoopMode::Auto))?;
    let mut model = model;
    assert!(
        model
            .networks_mut()
            .device_loop_note()
            .starts_with("device loop off"),
        "Auto on the CPU provider keeps the host loop"
    );
    if !missing.is_empty() {
        match HeliosModel::load(&tiny, &config(DeviceLoopMode::On)) {
            Err(HeliosError::Unsupported { what }) => {
                assert!(what.contains(&missing[0]), "{what}")
            }
            Err(other) => panic!("expected Unsupported naming the missing graphs, got {other}"),
            Ok(_) => panic!("DeviceLoopMode::On must not load without the device-loop graphs"),
        }
    }
    Ok(())
}

#[test]
fn f64_sigmas_run_through_the_device_loop() -> TestResult {
    // The GPU export's dmd_step graphs take σ in f64 (docs/graph-contract.md).
    let scratch = std::env::temp_dir().join(format!("helios-dl-f64-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    copy_dir(&common::tiny_model_dir(), &scratch)?;
    let f64_graphs = common::root().join("tests/fixtures/device-loop-f64");
    for s in 0..3 {
        let file = format!("dmd_step_stage{s}.onnx");
        std::fs::copy(f64_graphs.join(&file), scratch.join(&file))?;
    }
    let path = scratch.join("manifest.ron");
    let text = std::fs::read_to_string(&path)?;
    let edited = text
        .replace(
            "(name: \"sigma\", shape: [1], dtype: F32)",
            "(name: \"sigma\", shape: [1], dtype: F64)",
        )
        .replace(
            "(name: \"sigma_next\", shape: [1], dtype: F32)",
            "(name: \"sigma_next\", shape: [1], dtype: F64)",
        );
    assert_eq!(edited.matches("dtype: F64").count(), 6, "six sigma inputs");
    std::fs::write(&path, edited)?;
    let unverified = |mode| RuntimeConfig {
        verify_hashes: false,
        ..config(mode)
    };
    let mut device = HeliosModel::load(&scratch, &unverified(DeviceLoopMode::On))?;
    let mut host = HeliosModel::load(common::tiny_model_dir(), &config(DeviceLoopMode::Off))?;
    let cfg = StreamConfig::new(PromptWeights::one("storm"), 9);
    let (mut a, mut b) = (device.new_stream(&cfg)?, host.new_stream(&cfg)?);
    let (ca, cb) = (
        chunks(&mut device, &mut a, 2)?,
        chunks(&mut host, &mut b, 2)?,
    );
    let (err, scale) = history_diff(&a, &b);
    let (off, worst) = frame_diff(&ca, &cb);
    eprintln!(
        "f64 sigmas: history max abs diff {err:.3e}, {off} frame values differ by <= {worst}"
    );
    assert!(err <= 2e-5 * scale.max(1.0), "histories differ by {err}");
    assert!(worst <= 1, "frames differ by {worst} levels");
    std::fs::remove_dir_all(scratch)?;
    Ok(())
}

#[test]
fn buffers_shared_by_two_graphs_must_agree() -> TestResult {
    let dir = device_model("agree")?;
    let scratch = std::env::temp_dir().join(format!("helios-dl-agree-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    copy_dir(&dir, &scratch)?;
    let path = scratch.join("manifest.ron");
    let text = std::fs::read_to_string(&path)?;
    // history_slices' `short` as F16 while the denoisers take F32.
    let text = text.replacen(
        "(name: \"short\", shape: [1, 16, 2, 8, 8], dtype: F32)",
        "(name: \"short\", shape: [1, 16, 2, 8, 8], dtype: F16)",
        1,
    );
    std::fs::write(&path, text)?;
    let config = RuntimeConfig {
        verify_hashes: false,
        ..config(DeviceLoopMode::On)
    };
    match HeliosModel::load(&scratch, &config) {
        Err(HeliosError::ManifestMismatch { reason, .. }) => {
            assert!(reason.contains("shares its buffer"), "{reason}")
        }
        Err(other) => panic!("expected ManifestMismatch, got {other}"),
        Ok(_) => panic!("disagreeing shared buffers must not load"),
    }
    std::fs::remove_dir_all(scratch)?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

/// Records the schedules the host loop uses.
#[derive(Default)]
struct ScheduleRecorder(Vec<(Vec<f64>, Vec<f64>, f64)>);

impl SamplerObserver for ScheduleRecorder {
    fn schedule(&mut self, _name: &str, timesteps: &[f64], sigmas: &[f64], mu: f64) {
        self.0.push((timesteps.to_vec(), sigmas.to_vec(), mu));
    }
}

#[test]
fn precomputed_schedules_are_the_host_loops() -> TestResult {
    let mut model = HeliosModel::load(common::tiny_model_dir(), &config(DeviceLoopMode::Off))?;
    let mut state = model.new_stream(&StreamConfig::new(PromptWeights::one("day"), 5))?;
    let mut recorder = ScheduleRecorder::default();
    let mut noise = SeededNoise::new(5);
    for _ in 0..2 {
        model.next_chunk_with(&mut state, &mut noise, &mut recorder)?;
    }
    let sampler = model.sampler();
    let want: Vec<_> = [true, false]
        .into_iter()
        .flat_map(|amp| sampler.stage_schedules(amp))
        .map(|s| (s.timesteps, s.sigmas, s.mu))
        .collect();
    assert_eq!(
        recorder.0, want,
        "stage_schedules must equal what sample_chunk uses"
    );
    Ok(())
}
