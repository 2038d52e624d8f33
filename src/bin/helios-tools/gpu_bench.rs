//! `helios-tools gpu-bench`: GPU benchmark of the chunk loop: per-chunk time, generated FPS, time to first frame in both first-chunk
//! modes, heap allocations per chunk, and (with a diffusers recording) how far our outputs are from the
//! reference. Builds without Bevy; `tools/bench/side_by_side.sh` runs it next to diffusers on the device.
//!
//! Look at: the per-chunk lines, the summary line (steady ms, FPS, TTFF) and the JSON written by `--json`.
//!
//! ```sh
//! cargo build --release --no-default-features --features tools --bin helios-tools
//! target/release/helios-tools gpu-bench --model models/helios-tiny --provider cpu --loop device --chunks 3 \
//!     --inject-noise tests/fixtures/helios-tiny/t2v.safetensors --compare tests/fixtures/helios-tiny/t2v.safetensors
//! ```
//!
//! `helios-tools gpu-bench --help` lists the flags. The allocation counter is the binary's global
//! allocator (one relaxed atomic add per allocation, whatever the subcommand).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bevy_helios::core::model::HeliosModel;
use bevy_helios::core::runtime::{
    CudaOptions, DeviceLoopMode, GraphOptions, OrtModel, Provider, RuntimeConfig, TensorRtOptions,
};
use bevy_helios::core::sampler::history::HistoryRing;
use bevy_helios::core::sampler::noise::{DrawKind, InjectedNoise, NoiseSource, SeededNoise};
use bevy_helios::core::sampler::{
    Decoder, Denoiser, Sampler, SamplerObserver, SamplerOptions, video_to_rgba,
};
use ndarray::{Array3, Array5};

use crate::crate_path;

/// Counts heap allocations of the process (ONNX Runtime's C++ code allocates outside Rust's allocator).
struct CountingAlloc;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; counting is one relaxed atomic add.
#[expect(
    unsafe_code,
    reason = "a counting global allocator needs `unsafe impl GlobalAlloc`"
)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

type Error = Box<dyn std::error::Error>;

/// Flags of `gpu-bench`.
#[derive(clap::Args, Debug)]
#[command(args_override_self = true)]
pub struct Args {
    /// Exported model directory.
    #[arg(long, value_name = "DIR", default_value_os_t = crate_path("models/helios-tiny"))]
    model: PathBuf,
    /// Chunks in the timed stream (the first is the first chunk; at least 1).
    #[arg(long, value_name = "N", default_value_t = 3)]
    chunks: u64,
    /// `cuda` (CUDA only), `trt` (TensorRT, needs `prepare`, then CUDA) or `cpu`.
    #[arg(long, value_name = "P", default_value = "cuda")]
    provider: String,
    /// `device` (IoBinding loop) or `host` (the host sampler).
    #[arg(long = "loop", value_name = "L", default_value = "device", value_parser = ["device", "host"])]
    device_loop: String,
    /// `amplify` (the reference's doubled first chunk) or `fast`.
    #[arg(long, value_name = "M", default_value = "amplify", value_parser = ["amplify", "fast"])]
    first_chunk: String,
    /// Warm-up chunks on a throwaway stream, first chunk amplified.
    #[arg(long, value_name = "N", default_value_t = 2)]
    warmup: u64,
    /// Extra cold requests per first-chunk mode for time to first frame.
    #[arg(long, value_name = "N", default_value_t = 1)]
    ttff_reps: u64,
    /// ONNX Runtime profiling: one `PREFIX.<graph>_<time>.json` per session.
    #[arg(long, value_name = "PREFIX")]
    profile: Option<PathBuf>,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Take the timed stream's draws (and `prompt_embeds`) from a recording with
    /// `chunk{k}.draw.latent_noise`, `chunk{k}.draw.block_noise_stage{1,2}` (tools/bench/README.md).
    #[arg(long = "inject-noise", value_name = "FILE")]
    inject: Option<PathBuf>,
    /// Compare each chunk's latents with `chunk{k}.result` and frames with `chunk{k}.rgba`.
    #[arg(long, value_name = "FILE")]
    compare: Option<PathBuf>,
    /// Bank prompt when no `prompt_embeds` is injected (default: the bank's first).
    #[arg(long, value_name = "NAME")]
    prompt: Option<String>,
    /// Seed when no noise is injected.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// Fail if ONNX Runtime would put any node on the CPU (GPU providers).
    #[arg(long = "strict-placement")]
    strict: bool,
    /// How ONNX Runtime's CUDA arenas grow (`CudaOptions::arena_exact_growth`; default: its default, exact).
    #[arg(long, value_name = "exact|double", value_parser = ["exact", "double"])]
    arena: Option<String>,
    /// Capture CUDA graphs for these graph keys (`dmd_step_*`; repeatable; measured in BENCHMARKS.md).
    #[arg(long = "cuda-graph", value_name = "PATTERN")]
    cuda_graph: Vec<String>,
    /// Per-graph TF32 override (repeatable).
    #[arg(long, value_name = "PATTERN=on|off", value_parser = parse_tf32)]
    tf32: Vec<(String, bool)>,
    /// TensorRT engine cache for `--provider trt`.
    #[arg(long, value_name = "DIR", default_value = ".trt-cache")]
    trt_cache: PathBuf,
}

fn parse_tf32(v: &str) -> Result<(String, bool), String> {
    let (key, on) = v
        .split_once('=')
        .ok_or(format!("--tf32 PATTERN=on|off, not {v}"))?;
    Ok((key.into(), on == "on"))
}

/// What the flags ask for.
struct Bench {
    model: PathBuf,
    chunks: u64,
    provider: String,
    device_loop: bool,
    amplify: bool,
    warmup: u64,
    ttff_reps: usize,
    profile: Option<PathBuf>,
    json: Option<PathBuf>,
    inject: Option<PathBuf>,
    compare: Option<PathBuf>,
    prompt: Option<String>,
    seed: u64,
    strict: bool,
    arena_exact: bool,
    graphs: BTreeMap<String, GraphOptions>,
    trt_cache: PathBuf,
}

impl From<Args> for Bench {
    fn from(a: Args) -> Self {
        let mut graphs = BTreeMap::<String, GraphOptions>::new();
        for key in a.cuda_graph {
            graphs.entry(key).or_default().cuda_graph = Some(true);
        }
        for (key, on) in a.tf32 {
            graphs.entry(key).or_default().tf32 = Some(on);
        }
        Self {
            model: a.model,
            chunks: a.chunks.max(1),
            provider: a.provider,
            device_loop: a.device_loop == "device",
            amplify: a.first_chunk == "amplify",
            warmup: a.warmup,
            ttff_reps: a.ttff_reps as usize,
            profile: a.profile,
            json: a.json,
            inject: a.inject,
            compare: a.compare,
            prompt: a.prompt,
            seed: a.seed,
            strict: a.strict,
            arena_exact: a
                .arena
                .map_or(CudaOptions::default().arena_exact_growth, |a| a == "exact"),
            graphs,
            trt_cache: a.trt_cache,
        }
    }
}

/// A minimal JSON value for the report (no serde_json in the dependency tree of the core).
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn write(&self, out: &mut String, indent: usize) {
        let pad = |n: usize| "  ".repeat(n);
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(v) if v.is_finite() => {
                let _ = write!(out, "{v}");
            }
            Json::Num(_) => out.push_str("null"),
            Json::Str(s) => {
                out.push('"');
                for c in s.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        c if (c as u32) < 0x20 => {
                            let _ = write!(out, "\\u{:04x}", c as u32);
                        }
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            Json::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write(out, indent + 1);
                }
                out.push(']');
            }
            Json::Obj(fields) => {
                out.push_str("{\n");
                for (i, (k, v)) in fields.iter().enumerate() {
                    out.push_str(&pad(indent + 1));
                    Json::Str(k.clone()).write(out, indent + 1);
                    out.push_str(": ");
                    v.write(out, indent + 1);
                    if i + 1 < fields.len() {
                        out.push(',');
                    }
                    out.push('\n');
                }
                out.push_str(&pad(indent));
                out.push('}');
            }
        }
    }
}

fn obj(fields: Vec<(&str, Json)>) -> Json {
    Json::Obj(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn num(v: f64) -> Json {
    Json::Num(v)
}

/// A recording's tensors by name: shape and values as f32 (F32, U8 and I64 are read).
type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Reads a safetensors recording.
fn load_tensors(path: &Path) -> Result<Tensors, Error> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            safetensors::Dtype::U8 => data.iter().map(|v| *v as f32).collect(),
            safetensors::Dtype::I64 => data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            _ => continue,
        };
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}

/// Records the time each stage starts (the host loop reports its schedule at every stage entry).
struct StageClock {
    starts: Vec<Instant>,
}

impl SamplerObserver for StageClock {
    fn wants_tensors(&self) -> bool {
        false
    }
    fn schedule(&mut self, _name: &str, _timesteps: &[f64], _sigmas: &[f64], _mu: f64) {
        self.starts.push(Instant::now());
    }
}

/// One chunk's results.
struct ChunkResult {
    index: u64,
    amplified: bool,
    forwards: usize,
    wall_ms: f64,
    transformer_ms: f64,
    vae_ms: f64,
    stage_ms: Vec<f64>,
    allocations: u64,
    hot_allocations: u64,
    latents: Vec<f32>,
    rgba: Vec<u8>,
}

/// Runs one chunk the way `HeliosModel::next_chunk` does (frames end up as one `Vec<u8>` per frame).
fn run_chunk(
    nets: &mut OrtModel,
    sampler: &Sampler,
    index: u64,
    text: &Array3<f32>,
    history: &mut HistoryRing,
    noise: &mut dyn NoiseSource,
    plane: usize,
) -> Result<(ChunkResult, Vec<Vec<u8>>), Error> {
    let amplified = sampler.amplifies(index);
    let a0 = allocations();
    let t0 = Instant::now();
    // `hot`: the loop itself; `total`: up to the frames as the game gets them (one Vec per frame).
    let (hot, total, transformer_s, vae_s, stage_ms, latents, rgba, frames);
    if let Some(runner) = nets.chunk_runner() {
        let out = runner.run_chunk(sampler, index, text, history, noise)?;
        hot = allocations() - a0;
        frames = out
            .rgba
            .chunks_exact(plane)
            .map(<[u8]>::to_vec)
            .collect::<Vec<_>>();
        total = allocations() - a0;
        transformer_s = out.timings.denoise_s;
        vae_s = out.timings.decode_s;
        // Copies kept for --compare, after the counts.
        latents = out.latents.iter().copied().collect::<Vec<_>>();
        rgba = out.rgba.to_vec();
        stage_ms = nets
            .device_loop_stage_seconds()
            .map(|s| s.iter().map(|v| v * 1e3).collect())
            .unwrap_or_default();
    } else {
        let mut clock = StageClock {
            starts: Vec::with_capacity(8),
        };
        let lat: Array5<f32> =
            sampler.sample_chunk(index, text, history, nets, noise, &mut clock)?;
        let t1 = Instant::now();
        let video = nets.decode(&lat)?;
        hot = allocations() - a0;
        frames = video_to_rgba(&video);
        total = allocations() - a0;
        transformer_s = (t1 - t0).as_secs_f64();
        vae_s = t1.elapsed().as_secs_f64();
        let mut ends = clock.starts[1..].to_vec();
        ends.push(t1);
        stage_ms = clock
            .starts
            .iter()
            .zip(ends)
            .map(|(s, e)| (e - *s).as_secs_f64() * 1e3)
            .collect();
        latents = lat.iter().copied().collect();
        rgba = frames.concat();
    }
    let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
    Ok((
        ChunkResult {
            index,
            amplified,
            forwards: sampler.forwards_per_chunk(amplified),
            wall_ms,
            transformer_ms: transformer_s * 1e3,
            vae_ms: vae_s * 1e3,
            stage_ms,
            allocations: total,
            hot_allocations: hot,
            latents,
            rgba,
        },
        frames,
    ))
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// max |a − b|, max |b|, relative L2 and mean |a − b|.
fn diff(a: &[f32], b: &[f32]) -> (f64, f64, f64, f64) {
    let (mut max_abs, mut scale, mut num, mut den, mut sum) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let d = (*x as f64 - *y as f64).abs();
        max_abs = max_abs.max(d);
        scale = scale.max((*y as f64).abs());
        num += d * d;
        den += (*y as f64) * (*y as f64);
        sum += d;
    }
    let n = a.len().min(b.len()).max(1) as f64;
    (max_abs, scale, (num / den.max(1e-30)).sqrt(), sum / n)
}

fn providers(args: &Bench) -> Result<Vec<Provider>, String> {
    let cuda = Provider::Cuda(CudaOptions {
        arena_exact_growth: args.arena_exact,
        ..CudaOptions::default()
    });
    Ok(match args.provider.as_str() {
        "cuda" => vec![cuda],
        "cpu" => vec![Provider::Cpu],
        "trt" | "tensorrt" => vec![
            Provider::TensorRt(TensorRtOptions {
                cache_dir: Some(args.trt_cache.clone()),
                ..TensorRtOptions::default()
            }),
            cuda,
        ],
        other => return Err(format!("--provider cuda|trt|cpu, not {other}")),
    })
}

/// Runs the benchmark: exit status 1 (`Error: ...` on stderr) when it fails.
pub fn run(args: Args) -> ExitCode {
    match bench(&Bench::from(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // What `main` returning the error printed before.
            eprintln!("Error: {e:?}");
            ExitCode::from(1)
        }
    }
}

fn bench(args: &Bench) -> Result<(), Error> {
    let config = RuntimeConfig {
        providers: providers(args)?,
        device_loop: if args.device_loop {
            DeviceLoopMode::On
        } else {
            DeviceLoopMode::Off
        },
        strict_placement: args.strict,
        profile_prefix: args.profile.clone(),
        graphs: args.graphs.clone(),
        ..RuntimeConfig::default()
    };

    let t_load = Instant::now();
    let mut model = HeliosModel::load(&args.model, &config)?;
    let session_create_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let manifest = model.manifest().clone();
    let report = model.provider().clone();
    let note = model.networks_mut().device_loop_note().to_string();
    let shared_weight_bytes = model.networks_mut().shared_weight_bytes();
    // Device memory in use once every session exists (whole card, all processes), when there is a GPU.
    let gpu_used_after_load = (args.provider != "cpu")
        .then(|| bevy_helios::core::runtime::kernels::gpu_memory(0).ok())
        .flatten()
        .map(|(free, total)| total - free);
    println!(
        "model `{}` {}x{} on {report}; {note}; sessions created in {session_create_ms:.0} ms; \
         shared weights {:.2} GB; GPU memory in use {:.2} GB",
        manifest.name,
        manifest.width,
        manifest.height,
        shared_weight_bytes.unwrap_or(0) as f64 / 1e9,
        gpu_used_after_load.unwrap_or(0) as f64 / 1e9
    );
    let tf32: Vec<(String, Json)> = manifest
        .graphs
        .keys()
        .map(|k| {
            let provider = &config.providers[config
                .providers
                .iter()
                .position(|p| p.name() == report.active)
                .unwrap_or(0)];
            (k.clone(), Json::Bool(config.graph_choice(provider, k).0))
        })
        .collect();

    let inject = args.inject.as_deref().map(load_tensors).transpose()?;
    let reference = args.compare.as_deref().map(load_tensors).transpose()?;
    let text: Array3<f32> = match inject.as_ref().and_then(|t| t.get("prompt_embeds")) {
        Some((shape, values)) => {
            let (s, d) = (shape[shape.len() - 2], shape[shape.len() - 1]);
            Array3::from_shape_vec((1, s, d), values.clone())?
        }
        None => {
            let name = match &args.prompt {
                Some(p) => p.clone(),
                None => model
                    .bank()
                    .names()
                    .next()
                    .ok_or("the model's prompt bank is empty")?
                    .to_string(),
            };
            model
                .bank()
                .blend(&bevy_helios::prelude::PromptWeights::one(name))?
        }
    };
    let (h, w) = manifest.latent_hw();
    let c = manifest.latent_channels;
    let sizes = [
        manifest.history_sizes[0],
        manifest.history_sizes[1],
        manifest.history_sizes[2],
    ];
    let fresh = || HistoryRing::new(sizes, c, h, w);
    let plane = manifest.height * manifest.width * 4;
    let frames_per_chunk = manifest.frames_per_chunk() as f64;
    let mut sampler = model.sampler().clone();
    let with_amplify = |s: &mut Sampler, on: bool| {
        s.set_options(SamplerOptions {
            amplify_first_chunk: on,
        })
    };

    // Warm-up: a throwaway stream, first chunk amplified, so both binding sets have run once.
    with_amplify(&mut sampler, true);
    let mut warm_history = fresh();
    let mut warm_noise = SeededNoise::new(args.seed ^ 0x5eed);
    for k in 0..args.warmup {
        let (r, _) = run_chunk(
            model.networks_mut(),
            &sampler,
            k,
            &text,
            &mut warm_history,
            &mut warm_noise,
            plane,
        )?;
        println!("warm-up chunk {k}: {:.1} ms", r.wall_ms);
    }

    // The timed stream: a cold request on warm sessions.
    with_amplify(&mut sampler, args.amplify);
    let mut noise: Box<dyn NoiseSource> = match &inject {
        Some(t) => {
            let mut n = InjectedNoise::default();
            for k in 0..args.chunks {
                let get = |name: String| {
                    t.get(&name)
                        .map(|(_, v)| v.clone())
                        .ok_or(format!("{name} is not in the --inject-noise file"))
                };
                n.push(
                    DrawKind::LatentNoise,
                    get(format!("chunk{k}.draw.latent_noise"))?,
                );
                for s in 1..manifest.scheduler.stages {
                    n.push(
                        DrawKind::BlockNoise { stage: s },
                        get(format!("chunk{k}.draw.block_noise_stage{s}"))?,
                    );
                }
            }
            Box::new(n)
        }
        None => Box::new(SeededNoise::new(args.seed)),
    };
    let mut history = fresh();
    let mut results = Vec::new();
    for k in 0..args.chunks {
        let (r, frames) = run_chunk(
            model.networks_mut(),
            &sampler,
            k,
            &text,
            &mut history,
            noise.as_mut(),
            plane,
        )?;
        drop(frames);
        println!(
            "chunk {k}{}: {:.1} ms ({:.2} FPS; transformer {:.1} ms, stages {:?}, VAE + copies {:.1} ms; \
             {} allocations, {} in the loop)",
            if r.amplified { " (amplified)" } else { "" },
            r.wall_ms,
            frames_per_chunk * 1e3 / r.wall_ms,
            r.transformer_ms,
            r.stage_ms
                .iter()
                .map(|v| format!("{v:.1}"))
                .collect::<Vec<_>>(),
            r.vae_ms,
            r.allocations,
            r.hot_allocations
        );
        results.push(r);
    }

    // Time to first frame in both modes: new stream, first chunk, frames on the host.
    let mut ttff: Vec<(String, Json)> = Vec::new();
    for (name, on) in [("amplify", true), ("fast", false)] {
        with_amplify(&mut sampler, on);
        let mut times = Vec::new();
        for rep in 0..args.ttff_reps {
            let mut hist = fresh();
            let mut n = SeededNoise::new(args.seed.wrapping_add(1000 + rep as u64));
            let (r, _) = run_chunk(
                model.networks_mut(),
                &sampler,
                0,
                &text,
                &mut hist,
                &mut n,
                plane,
            )?;
            times.push(r.wall_ms);
        }
        println!("time to first frame, {name}: {times:.1?} ms");
        ttff.push((name.into(), Json::Arr(times.into_iter().map(num).collect())));
    }

    // Against the reference.
    let mut compare: Vec<(String, Json)> = Vec::new();
    if let Some(reference) = &reference {
        for r in &results {
            if let Some((shape, values)) = reference.get(&format!("chunk{}.result", r.index)) {
                let (max_abs, scale, rel_l2, mean_abs) = diff(&r.latents, values);
                println!(
                    "chunk{}.result vs reference {shape:?}: max abs {max_abs:.3e} (max |ref| {scale:.3}), \
                     rel L2 {rel_l2:.3e}",
                    r.index
                );
                compare.push((
                    format!("chunk{}.result", r.index),
                    obj(vec![
                        ("max_abs", num(max_abs)),
                        ("max_rel", num(max_abs / scale.max(1e-30))),
                        ("rel_l2", num(rel_l2)),
                        ("mean_abs", num(mean_abs)),
                    ]),
                ));
            }
            if let Some((_, values)) = reference.get(&format!("chunk{}.rgba", r.index)) {
                let ours: Vec<f32> = r.rgba.iter().map(|v| *v as f32).collect();
                let (max_abs, _, _, mean_abs) = diff(&ours, values);
                let off = ours.iter().zip(values).filter(|(a, b)| a != b).count();
                println!(
                    "chunk{}.rgba vs reference: {off} of {} bytes differ, by at most {max_abs}",
                    r.index,
                    values.len()
                );
                compare.push((
                    format!("chunk{}.rgba", r.index),
                    obj(vec![
                        ("max_abs", num(max_abs)),
                        ("max_rel", num(max_abs / 255.0)),
                        ("mean_abs", num(mean_abs)),
                        ("count_off", num(off as f64)),
                        ("count", num(values.len() as f64)),
                    ]),
                ));
            }
        }
    }

    let profile_files: Vec<Json> = if args.profile.is_some() {
        model
            .networks_mut()
            .end_profiling()?
            .into_iter()
            .map(|(key, file)| {
                obj(vec![
                    ("graph", Json::Str(key)),
                    ("file", Json::Str(file.display().to_string())),
                ])
            })
            .collect()
    } else {
        Vec::new()
    };

    let steady: Vec<&ChunkResult> = results.iter().skip(1).collect();
    let steady_ms = median(steady.iter().map(|r| r.wall_ms).collect());
    let steady_allocs = median(steady.iter().map(|r| r.allocations as f64).collect());
    let steady_hot = median(steady.iter().map(|r| r.hot_allocations as f64).collect());
    println!(
        "steady chunk {steady_ms:.1} ms = {:.2} generated FPS; first chunk {:.1} ms; {steady_allocs} heap \
         allocations per steady chunk ({steady_hot} in the loop)",
        frames_per_chunk * 1e3 / steady_ms,
        results[0].wall_ms
    );
    let stats = model.networks_mut().device_loop_stats();
    let json = obj(vec![
        ("bench", Json::Str("bevy_helios gpu_bench".into())),
        ("model", Json::Str(args.model.display().to_string())),
        ("model_name", Json::Str(manifest.name.clone())),
        ("height", num(manifest.height as f64)),
        ("width", num(manifest.width as f64)),
        ("provider", Json::Str(args.provider.clone())),
        ("active_provider", Json::Str(report.active.clone())),
        ("provider_report", Json::Str(report.to_string())),
        (
            "loop",
            Json::Str(if args.device_loop { "device" } else { "host" }.into()),
        ),
        ("device_loop", Json::Str(note)),
        (
            "first_chunk",
            Json::Str(if args.amplify { "amplify" } else { "fast" }.into()),
        ),
        ("injected_noise", Json::Bool(inject.is_some())),
        ("arena_exact_growth", Json::Bool(args.arena_exact)),
        ("session_create_ms", num(session_create_ms)),
        (
            "shared_weight_bytes",
            shared_weight_bytes.map_or(Json::Null, |b| num(b as f64)),
        ),
        (
            "gpu_used_after_load_bytes",
            gpu_used_after_load.map_or(Json::Null, |b| num(b as f64)),
        ),
        ("warmup_chunks", num(args.warmup as f64)),
        ("frames_per_chunk", num(frames_per_chunk)),
        (
            "chunks",
            Json::Arr(
                results
                    .iter()
                    .map(|r| {
                        obj(vec![
                            ("index", num(r.index as f64)),
                            ("amplified", Json::Bool(r.amplified)),
                            ("forwards", num(r.forwards as f64)),
                            ("wall_ms", num(r.wall_ms)),
                            ("fps", num(frames_per_chunk * 1e3 / r.wall_ms)),
                            ("transformer_ms", num(r.transformer_ms)),
                            ("vae_ms", num(r.vae_ms)),
                            (
                                "stage_ms",
                                Json::Arr(r.stage_ms.iter().map(|v| num(*v)).collect()),
                            ),
                            ("allocations", num(r.allocations as f64)),
                            ("hot_loop_allocations", num(r.hot_allocations as f64)),
                        ])
                    })
                    .collect(),
            ),
        ),
        ("steady_chunk_ms", num(steady_ms)),
        ("generated_fps", num(frames_per_chunk * 1e3 / steady_ms)),
        ("ttff_ms", num(results[0].wall_ms)),
        ("ttff_by_mode_ms", Json::Obj(ttff)),
        ("host_allocations_per_chunk", num(steady_allocs)),
        ("hot_loop_allocations_per_chunk", num(steady_hot)),
        (
            "device_loop_stats",
            match stats {
                Some(s) => obj(vec![
                    ("chunks", num(s.chunks as f64)),
                    ("runs", num(s.runs as f64)),
                    ("uploads", num(s.uploads as f64)),
                    ("downloads", num(s.downloads as f64)),
                    ("device_copies", num(s.device_copies as f64)),
                    ("history_uploads", num(s.history_uploads as f64)),
                ]),
                None => Json::Null,
            },
        ),
        ("tf32", Json::Obj(tf32)),
        ("strict_placement", Json::Bool(args.strict)),
        ("compare", Json::Obj(compare)),
        ("profile_files", Json::Arr(profile_files)),
        (
            "gpu_used_at_end_bytes",
            (args.provider != "cpu")
                .then(|| bevy_helios::core::runtime::kernels::gpu_memory(0).ok())
                .flatten()
                .map_or(Json::Null, |(free, total)| num((total - free) as f64)),
        ),
        ("peak_vram_bytes", Json::Null),
    ]);
    if let Some(path) = &args.json {
        let mut text = String::new();
        json.write(&mut text, 0);
        text.push('\n');
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
