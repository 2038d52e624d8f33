//! `helios-tools batch-generate`: loads a model once and runs many short streams from a jobs file,
//! writing each stream's frames as raw RGB bytes. `tools/eval/eval_nano.py` drives it.
//!
//! ```sh
//! cargo run --release --no-default-features --features tools --bin helios-tools -- batch-generate \
//!     --model models/helios-nano --jobs jobs.tsv --out out/eval
//! ```
//!
//! Jobs file: one stream per line, tab-separated, `#` starts a comment:
//! `id  seed  chunks  prompt  [switch_at  prompt_after]`. A prompt is a bank name, free text (models
//! with a text encoder), or weights `name=w,name=w`.
//!
//! Output per job: `OUT/<id>.rgb` (all frames, `frames·height·width·3` bytes, row-major RGB), and one
//! line per chunk in `OUT/timings.tsv`: `id  chunk  denoise_s  decode_s`. Exit status 1 on any error.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use bevy_helios::core::embedding::PromptWeights;
use bevy_helios::core::model::HeliosModel;
use bevy_helios::core::runtime::RuntimeConfig;
use bevy_helios::core::sampler::SamplerOptions;
use bevy_helios::core::stream::StreamConfig;

use crate::{ProviderList, crate_path, parse_providers};

/// Flags of `batch-generate`.
#[derive(clap::Args, Debug)]
#[command(args_override_self = true)]
pub struct Args {
    /// Exported model directory.
    #[arg(long, value_name = "DIR", default_value_os_t = crate_path("models/helios-nano"))]
    model: PathBuf,
    /// The jobs file (tab-separated; see the module doc).
    #[arg(long, value_name = "FILE")]
    jobs: PathBuf,
    /// Output directory: `<id>.rgb` per job and `timings.tsv`.
    #[arg(long, value_name = "DIR", default_value = "out/batch")]
    out: PathBuf,
    /// Comma-separated provider chain of `trt`, `cuda`, `cpu`.
    #[arg(long = "provider", value_name = "LIST", default_value = "cpu", value_parser = parse_providers)]
    providers: ProviderList,
    /// Don't amplify the first chunk.
    #[arg(long)]
    fast_start: bool,
}

/// One line of the jobs file.
struct Job {
    id: String,
    seed: u64,
    chunks: u64,
    prompt: String,
    switch: Option<(u64, String)>,
}

fn parse_jobs(text: &str) -> Result<Vec<Job>, String> {
    let mut jobs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let bad = |what: &str| format!("jobs line {}: {what}: `{line}`", n + 1);
        if f.len() != 4 && f.len() != 6 {
            return Err(bad("expected 4 or 6 tab-separated fields"));
        }
        let num = |s: &str| s.parse::<u64>().map_err(|_| bad("not a number"));
        jobs.push(Job {
            id: f[0].to_string(),
            seed: num(f[1])?,
            chunks: num(f[2])?,
            prompt: f[3].to_string(),
            switch: if f.len() == 6 {
                Some((num(f[4])?, f[5].to_string()))
            } else {
                None
            },
        });
    }
    Ok(jobs)
}

/// A prompt spec: weights if it looks like `name=w,...`, else one bank name or free text.
fn prompt(spec: &str) -> Result<PromptWeights, Box<dyn std::error::Error>> {
    if spec.contains('=') {
        Ok(PromptWeights::parse(spec)?)
    } else {
        Ok(PromptWeights::one(spec))
    }
}

/// Runs the jobs; errors are printed as `error: ...` with exit status 1.
pub fn run(args: Args) -> ExitCode {
    match generate(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn generate(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let Args {
        model: model_dir,
        jobs: jobs_file,
        out,
        providers: ProviderList(providers),
        fast_start,
    } = args;
    let jobs = parse_jobs(&std::fs::read_to_string(&jobs_file)?)?;
    let config = RuntimeConfig {
        providers,
        ..RuntimeConfig::default()
    };
    let mut model = HeliosModel::load(&model_dir, &config)?;
    if fast_start {
        model.set_sampler_options(SamplerOptions {
            amplify_first_chunk: false,
        });
    }
    std::fs::create_dir_all(&out)?;
    let mut timings = String::from("id\tchunk\tdenoise_s\tdecode_s\n");
    let t_all = Instant::now();
    for (j, job) in jobs.iter().enumerate() {
        let mut stream = model.new_stream(&StreamConfig::new(prompt(&job.prompt)?, job.seed))?;
        let mut rgb = Vec::new();
        for k in 0..job.chunks {
            if let Some((at, after)) = &job.switch
                && *at == k
            {
                stream.set_prompt(prompt(after)?);
            }
            let chunk = model.next_chunk(&mut stream)?;
            for frame in &chunk.frames {
                rgb.extend(frame.chunks_exact(4).flat_map(|px| [px[0], px[1], px[2]]));
            }
            writeln!(
                timings,
                "{}\t{k}\t{:.6}\t{:.6}",
                job.id, chunk.timings.denoise_s, chunk.timings.decode_s
            )?;
        }
        std::fs::write(out.join(format!("{}.rgb", job.id)), rgb)?;
        println!(
            "[{}/{}] {} ({} chunks) done, {:.1}s total",
            j + 1,
            jobs.len(),
            job.id,
            job.chunks,
            t_all.elapsed().as_secs_f64()
        );
    }
    std::fs::write(out.join("timings.tsv"), timings)?;
    Ok(())
}
