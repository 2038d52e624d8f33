//! The fused GPU export on the CPU provider: `tests/fixtures/helios-tiny-fused` is helios-tiny written with
//! `export.py all --tiny --seed 0 --fused-kernels` (denoisers as MatMul + MultiHeadAttention + `com.helios`
//! operators with one shared weights file, the VAE decoder with `ChannelRmsNorm`). Same weights as
//! `models/helios-tiny`, so both must generate the same video, and both must match diffusers' recording.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;

use bevy_helios::core::model::HeliosModel;
use bevy_helios::core::runtime::{DeviceLoopMode, RuntimeConfig};
use bevy_helios::core::sampler::SamplerObserver;
use bevy_helios::prelude::*;
use common::{load_fixture, max_abs_diff};
use ndarray::Array5;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Counts the heap allocations each thread makes. ONNX Runtime's CPU provider runs a node's kernel on the
/// thread that runs the session, so a chunk's count on the test's thread includes every `com.helios` call.
struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with`: the allocator also serves threads whose locals are being torn down.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: forwards to the system allocator; counting touches a thread-local integer and never allocates.
#[expect(
    unsafe_code,
    reason = "a counting global allocator needs `unsafe impl GlobalAlloc`"
)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Heap allocations this thread made for one steady chunk of `dir`'s model in the device loop (CPU provider),
/// after two warm-up chunks.
fn steady_chunk_allocations(dir: &std::path::Path) -> Result<u64, Box<dyn std::error::Error>> {
    let config = RuntimeConfig {
        device_loop: DeviceLoopMode::On,
        ..RuntimeConfig::cpu()
    };
    let mut model = HeliosModel::load(dir, &config)?;
    let mut state = model.new_stream(&StreamConfig::new(PromptWeights::one("day"), 42))?;
    for _ in 0..2 {
        model.next_chunk(&mut state)?;
    }
    let before = ALLOCATIONS.with(Cell::get);
    let chunk = model.next_chunk(&mut state)?;
    let count = ALLOCATIONS.with(Cell::get) - before;
    drop(chunk);
    Ok(count)
}

fn fused_model_dir() -> std::path::PathBuf {
    common::root().join("tests/fixtures/helios-tiny-fused")
}

/// Keeps each chunk's latents (`chunk{k}.result`).
#[derive(Default)]
struct Results(BTreeMap<String, Array5<f32>>);

impl SamplerObserver for Results {
    fn tensor(&mut self, name: &str, value: &Array5<f32>) {
        if name.ends_with(".result") {
            self.0.insert(name.to_string(), value.clone());
        }
    }
}

/// Latents per chunk (`chunk{k}.result`) and every frame of a generated stream.
type Generated = (BTreeMap<String, Array5<f32>>, Vec<Vec<u8>>);

/// Three chunks of the diffusers fixture's stream (its draws injected).
fn generate(
    dir: &std::path::Path,
    config: &RuntimeConfig,
) -> Result<Generated, Box<dyn std::error::Error>> {
    let fixture = load_fixture(&common::root().join("tests/fixtures/helios-tiny/t2v.safetensors"))?;
    let mut model = HeliosModel::load(dir, config)?;
    let mut noise = common::fixture_noise(&fixture, 3);
    let mut state = model.new_stream(&StreamConfig::new(PromptWeights::one("day"), 42))?;
    let mut results = Results::default();
    let mut frames = Vec::new();
    for _ in 0..3 {
        frames.extend(
            model
                .next_chunk_with(&mut state, &mut noise, &mut results)?
                .frames,
        );
    }
    Ok((results.0, frames))
}

#[test]
fn fused_tiny_generates_what_helios_tiny_and_diffusers_generate() -> TestResult {
    let fixture = load_fixture(&common::root().join("tests/fixtures/helios-tiny/t2v.safetensors"))?;
    let (plain, plain_frames) = generate(&common::tiny_model_dir(), &RuntimeConfig::cpu())?;
    let (fused, fused_frames) = generate(&fused_model_dir(), &RuntimeConfig::cpu())?;
    for k in 0..3 {
        let name = format!("chunk{k}.result");
        let (ours, theirs) = (&fused[&name], &plain[&name]);
        let (err, scale) = max_abs_diff(
            ours.iter().map(|v| *v as f64),
            &theirs.iter().map(|v| *v as f64).collect::<Vec<_>>(),
        );
        assert!(
            err <= 1e-4 * scale.max(1.0),
            "{name}: the fused graphs differ from helios-tiny's by {err:e} (max |value| {scale})"
        );
        eprintln!("{name}: fused vs helios-tiny {err:.3e} (max |value| {scale:.3})");
        let (err, scale) = max_abs_diff(ours.iter().map(|v| *v as f64), &fixture[&name].values);
        eprintln!("{name}: fused vs diffusers {err:.3e}");
        assert!(
            err <= 1e-4 * scale.max(1.0),
            "{name}: the fused graphs differ from diffusers by {err:e} (max |value| {scale})"
        );
    }
    assert_eq!(fused_frames.len(), plain_frames.len());
    let worst = fused_frames
        .iter()
        .zip(&plain_frames)
        .flat_map(|(a, b)| a.iter().zip(b))
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0);
    eprintln!("frames: fused vs helios-tiny differ by at most {worst} levels");
    assert!(
        worst <= 1,
        "the fused VAE's frames differ from helios-tiny's by {worst} levels"
    );
    Ok(())
}

#[test]
fn fused_tiny_runs_in_the_device_loop() -> TestResult {
    // The device loop binds every graph's I/O (IoBinding); on the CPU provider it runs the same code as on
    // CUDA, with the fused operators' CPU kernels.
    let host = generate(&fused_model_dir(), &RuntimeConfig::cpu())?;
    let device = generate(
        &fused_model_dir(),
        &RuntimeConfig {
            device_loop: DeviceLoopMode::On,
            ..RuntimeConfig::cpu()
        },
    )?;
    for (name, latents) in &host.0 {
        let (err, _) = max_abs_diff(
            device.0[name].iter().map(|v| *v as f64),
            &latents.iter().map(|v| *v as f64).collect::<Vec<_>>(),
        );
        assert!(
            err <= 1e-5,
            "{name}: device loop and host loop differ by {err:e}"
        );
    }
    Ok(())
}

#[test]
fn fused_operators_allocate_nothing_per_call() -> TestResult {
    // The same chunk with and without the `com.helios` operators (some 340 calls a chunk here): any host
    // allocation inside a call would show as hundreds more. (The ort crate's safe accessors made ~13 a call.)
    let fused = steady_chunk_allocations(&fused_model_dir())?;
    let plain = steady_chunk_allocations(&common::tiny_model_dir())?;
    assert!(
        fused <= plain,
        "a steady fused chunk made {fused} heap allocations, the unfused model {plain}"
    );
    Ok(())
}

#[test]
fn fused_manifest_declares_its_shared_weights() -> TestResult {
    let manifest = bevy_helios::core::manifest::ModelManifest::load(&fused_model_dir())?;
    let shared = manifest
        .shared_weights
        .expect("the fused export records its shared weights file");
    assert_eq!(shared.file, "denoiser_weights.safetensors");
    assert_eq!(
        shared.graphs,
        ["denoiser_stage0", "denoiser_stage1", "denoiser_stage2"]
    );
    assert!(
        fused_model_dir().join(&shared.file).is_file(),
        "the shared weights file is in the model directory"
    );
    Ok(())
}
