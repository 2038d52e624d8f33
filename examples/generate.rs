//! Command-line generator: runs a Helios model on ONNX Runtime and writes PNG frames and an animated GIF.
//!
//! Look at: the progress line per chunk (time, frames/s, provider) and `out/generate/video.gif`.
//!
//! ```sh
//! cargo run --release --example generate -- --prompt day --chunks 3 --seed 42 --out out/generate
//! cargo run --release --example generate -- --prompt "day=0.5,storm=0.5" --switch-to night --switch-at 2
//! ```
//!
//! `--help` lists every flag (the `Args` struct below).
#![expect(clippy::print_stdout, reason = "a command-line tool reports on stdout")]

use std::path::PathBuf;
use std::time::Instant;

use bevy_helios::core::runtime::Provider;
use bevy_helios::core::sampler::SamplerOptions;
use bevy_helios::prelude::*;
use clap::Parser;
use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame, RgbaImage};

/// Runs a Helios model on ONNX Runtime and writes PNG frames and an animated GIF.
#[derive(Parser, Debug)]
#[command(args_override_self = true)]
struct Args {
    /// Exported model directory.
    #[arg(long, value_name = "DIR", default_value_os_t = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/helios-nano"))]
    model: PathBuf,
    /// Prompt name from the model's bank, free text (models with a text encoder, e.g. `"a city at night in
    /// the rain"`; commas allowed), or weights `name=w,name=w`.
    #[arg(long, value_name = "SPEC", default_value = "day")]
    prompt: String,
    /// Prompt to change to mid-stream ...
    #[arg(long, value_name = "SPEC")]
    switch_to: Option<String>,
    /// ... from chunk N on.
    #[arg(long, value_name = "N", default_value_t = 1)]
    switch_at: u64,
    /// Chunks a prompt change blends over (1: immediate).
    #[arg(long, value_name = "N", default_value_t = 1)]
    crossfade: u32,
    /// Seed of every random draw.
    #[arg(long, value_name = "N", default_value_t = 42)]
    seed: u64,
    /// Chunks to generate, 33 frames each.
    #[arg(long, value_name = "N", default_value_t = 3)]
    chunks: u64,
    /// Must equal the model's exported width (graphs are static-shape; re-export with
    /// `tools/export/export.py --width --height` for another size).
    #[arg(long, value_name = "W", requires = "height")]
    width: Option<usize>,
    /// Must equal the model's exported height.
    #[arg(long, value_name = "H", requires = "width")]
    height: Option<usize>,
    /// Image-to-video: condition on this image (PNG/JPEG/GIF).
    #[arg(long, value_name = "PATH")]
    image: Option<PathBuf>,
    /// Comma-separated chain of `trt`, `cuda`, `cpu`.
    #[arg(long = "provider", value_name = "LIST", default_value = "trt,cuda,cpu", value_delimiter = ',', value_parser = provider)]
    providers: Vec<Provider>,
    /// Don't amplify the first chunk (about half the time to the first frame).
    #[arg(long)]
    fast_start: bool,
    /// GIF playback rate (at least 1).
    #[arg(long, value_name = "N", default_value_t = 24)]
    fps: u32,
    /// Output folder.
    #[arg(long, value_name = "DIR", default_value = "out/generate")]
    out: PathBuf,
    /// Skip the PNG frames.
    #[arg(long)]
    no_png: bool,
    /// Skip the GIF.
    #[arg(long)]
    no_gif: bool,
    /// Print the bank's prompt names and exit.
    #[arg(long)]
    list_prompts: bool,
}

fn provider(name: &str) -> Result<Provider, String> {
    Provider::parse(name).ok_or_else(|| format!("unknown provider `{name}` (trt, cuda, cpu)"))
}

/// Weights if the spec looks like `name=w,...`, else one bank name or free text (which may hold commas).
fn prompt_spec(spec: &str) -> Result<PromptWeights, HeliosError> {
    if spec.contains('=') {
        PromptWeights::parse(spec)
    } else {
        Ok(PromptWeights::one(spec.trim()))
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let config = RuntimeConfig {
        providers: args.providers.clone(),
        ..RuntimeConfig::default()
    };
    let t_load = Instant::now();
    let mut model = HeliosModel::load(&args.model, &config)?;
    let m = model.manifest().clone();
    println!(
        "model `{}` ({}x{}, {} frames/chunk) loaded in {:.2}s on {}",
        m.name,
        m.width,
        m.height,
        m.frames_per_chunk(),
        t_load.elapsed().as_secs_f64(),
        model.provider()
    );
    if args.list_prompts {
        for name in model.bank().names() {
            println!("{name}: {}", model.bank().text(name).unwrap_or(""));
        }
        return Ok(());
    }
    if let (Some(w), Some(h)) = (args.width, args.height)
        && (w, h) != (m.width, m.height)
    {
        return Err(format!(
            "this model was exported at {}x{}; re-export it with --width {w} --height {h} for that size",
            m.width, m.height
        )
        .into());
    }
    if args.fast_start {
        model.set_sampler_options(SamplerOptions {
            amplify_first_chunk: false,
        });
    }
    let mut stream = model.new_stream(&StreamConfig {
        seed: args.seed,
        prompt: prompt_spec(&args.prompt)?,
        crossfade_chunks: args.crossfade,
    })?;
    if let Some(path) = &args.image {
        let img = image::open(path)?.to_rgba8();
        model.condition_on_image(&mut stream, img.as_raw(), img.width(), img.height())?;
        println!("conditioned on {}", path.display());
    }
    std::fs::create_dir_all(&args.out)?;
    let mut gif_frames = Vec::new();
    let t_start = Instant::now();
    for k in 0..args.chunks {
        if k == args.switch_at
            && let Some(spec) = &args.switch_to
        {
            stream.set_prompt(prompt_spec(spec)?);
        }
        let t = Instant::now();
        let chunk = model.next_chunk(&mut stream)?;
        let secs = t.elapsed().as_secs_f64();
        let prompt: Vec<String> = chunk
            .prompt
            .0
            .iter()
            .map(|(n, w)| format!("{n}={w:.2}"))
            .collect();
        println!(
            "chunk {}/{}: {} frames in {:.2}s ({:.1} frames/s; denoise {:.2}s, decode {:.2}s) prompt [{}] on {}{}",
            k + 1,
            args.chunks,
            chunk.frames.len(),
            secs,
            chunk.frames.len() as f64 / secs,
            chunk.timings.denoise_s,
            chunk.timings.decode_s,
            prompt.join(", "),
            model.provider().active,
            if k == 0 {
                format!(
                    ", first frame after {:.2}s",
                    t_start.elapsed().as_secs_f64()
                )
            } else {
                String::new()
            }
        );
        for (i, frame) in chunk.frames.into_iter().enumerate() {
            let img = RgbaImage::from_raw(chunk.width, chunk.height, frame)
                .ok_or("frame size mismatch")?;
            if !args.no_png {
                img.save(args.out.join(format!(
                    "frame_{:05}.png",
                    k as usize * m.frames_per_chunk() + i
                )))?;
            }
            if !args.no_gif {
                gif_frames.push(Frame::from_parts(
                    img,
                    0,
                    0,
                    Delay::from_numer_denom_ms(1000, args.fps.max(1)),
                ));
            }
        }
    }
    if !args.no_gif {
        let path = args.out.join("video.gif");
        let mut enc = GifEncoder::new(std::fs::File::create(&path)?);
        enc.set_repeat(Repeat::Infinite)?;
        enc.encode_frames(gif_frames)?;
        println!("wrote {}", path.display());
    }
    println!(
        "saved state: {} bytes of RON (GenerationState::to_ron)",
        stream.to_ron()?.len()
    );
    Ok(())
}
