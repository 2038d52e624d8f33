//! Command-line generator: runs a Helios model on ONNX Runtime and writes PNG frames and an animated GIF.
//!
//! Look at: the progress line per chunk (time, frames/s, provider) and `out/generate/video.gif`.
//!
//! ```sh
//! cargo run --release --example generate -- --prompt day --chunks 3 --seed 42 --out out/generate
//! cargo run --release --example generate -- --prompt "day=0.5,storm=0.5" --switch-to night --switch-at 2
//! ```
//!
//! Flags (all optional):
//! - `--model DIR`        exported model directory (default `models/helios-nano`)
//! - `--prompt SPEC`      prompt name from the model's bank, free text (models with a text encoder, e.g.
//!   `"a city at night in the rain"`; commas allowed), or weights `name=w,name=w` (default `day`)
//! - `--switch-to SPEC`   prompt to change to mid-stream ...
//! - `--switch-at N`      ... from chunk N on (default 1)
//! - `--crossfade N`      chunks a prompt change blends over (default 1: immediate)
//! - `--seed N`           seed of every random draw (default 42)
//! - `--chunks N`         chunks to generate, 33 frames each (default 3)
//! - `--width W --height H` must equal the model's exported resolution (graphs are static-shape;
//!   re-export with `tools/export/export.py --width --height` for another size)
//! - `--image PATH`       image-to-video: condition on this image (PNG/JPEG/GIF)
//! - `--provider LIST`    comma-separated chain of `trt`, `cuda`, `cpu` (default `trt,cuda,cpu`)
//! - `--fast-start`       don't amplify the first chunk (about half the time to the first frame)
//! - `--fps N`            GIF playback rate (default 24)
//! - `--out DIR`          output folder (default `out/generate`)
//! - `--no-png` / `--no-gif` skip one output
//! - `--list-prompts`     print the bank's prompt names and exit
#![expect(clippy::print_stdout, reason = "a command-line tool reports on stdout")]

use std::path::PathBuf;
use std::time::Instant;

use bevy_helios::core::runtime::Provider;
use bevy_helios::core::sampler::SamplerOptions;
use bevy_helios::prelude::*;
use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame, RgbaImage};

struct Args {
    model: PathBuf,
    prompt: String,
    switch_to: Option<String>,
    switch_at: u64,
    crossfade: u32,
    seed: u64,
    chunks: u64,
    size: Option<(usize, usize)>,
    image: Option<PathBuf>,
    providers: Vec<Provider>,
    fast_start: bool,
    fps: u32,
    out: PathBuf,
    png: bool,
    gif: bool,
    list_prompts: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/helios-nano"),
        prompt: "day".into(),
        switch_to: None,
        switch_at: 1,
        crossfade: 1,
        seed: 42,
        chunks: 3,
        size: None,
        image: None,
        providers: Provider::default_chain(),
        fast_start: false,
        fps: 24,
        out: PathBuf::from("out/generate"),
        png: true,
        gif: true,
        list_prompts: false,
    };
    let mut width = None;
    let mut height = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: `{v}` is not a number"))
        };
        match flag.as_str() {
            "--model" => a.model = value()?.into(),
            "--prompt" => a.prompt = value()?,
            "--switch-to" => a.switch_to = Some(value()?),
            "--switch-at" => a.switch_at = num(value()?)?,
            "--crossfade" => a.crossfade = num(value()?)? as u32,
            "--seed" => a.seed = num(value()?)?,
            "--chunks" => a.chunks = num(value()?)?,
            "--width" => width = Some(num(value()?)? as usize),
            "--height" => height = Some(num(value()?)? as usize),
            "--image" => a.image = Some(value()?.into()),
            "--provider" => {
                a.providers = value()?
                    .split(',')
                    .map(|p| {
                        Provider::parse(p)
                            .ok_or_else(|| format!("unknown provider `{p}` (trt, cuda, cpu)"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--fast-start" => a.fast_start = true,
            "--fps" => a.fps = num(value()?)?.max(1) as u32,
            "--out" => a.out = value()?.into(),
            "--no-png" => a.png = false,
            "--no-gif" => a.gif = false,
            "--list-prompts" => a.list_prompts = true,
            "--help" | "-h" => {
                println!("see the doc comment at the top of examples/generate.rs for every flag");
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag `{other}` (try --help)")),
        }
    }
    if let (Some(w), Some(h)) = (width, height) {
        a.size = Some((w, h));
    } else if width.is_some() || height.is_some() {
        return Err("give both --width and --height".into());
    }
    Ok(a)
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
    let args = parse_args()?;
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
    if let Some((w, h)) = args.size
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
            if args.png {
                img.save(args.out.join(format!(
                    "frame_{:05}.png",
                    k as usize * m.frames_per_chunk() + i
                )))?;
            }
            if args.gif {
                gif_frames.push(Frame::from_parts(
                    img,
                    0,
                    0,
                    Delay::from_numer_denom_ms(1000, args.fps),
                ));
            }
        }
    }
    if args.gif {
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
