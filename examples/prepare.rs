//! Builds a model's TensorRT engines ahead of time, so the game never builds them while loading.
//!
//! Look at: one line per graph with the seconds its engine took, then the record it leaves in the cache
//! directory. Without TensorRT it says so, says which provider the game will use instead, and exits 2.
//!
//! ```sh
//! cargo run --release --no-default-features --example prepare -- --model models/helios-tiny --cache trt-cache
//! ```
//!
//! Flags:
//! - `--model DIR`       exported model directory (default `models/helios-tiny`)
//! - `--cache DIR`       engine and timing cache directory (required; give the game the same one in
//!   `TensorRtOptions::cache_dir`)
//! - `--fp16` / `--no-fp16`  allow fp16 kernels (default on)
//! - `--bf16`            allow bf16 kernels
//! - `--workspace BYTES` TensorRT builder workspace limit
//! - `--device N`        CUDA device (default 0)
//!
//! Exit status: 0 engines built, 1 bad arguments or model, 2 TensorRT unavailable.
#![expect(clippy::print_stdout, reason = "a command-line tool reports on stdout")]

use std::path::PathBuf;
use std::process::ExitCode;

use bevy_helios::core::manifest::ModelManifest;
use bevy_helios::core::model::HeliosModel;
use bevy_helios::core::runtime::prepare::{PrepareProgress, RECORD_FILE, prepare};
use bevy_helios::core::runtime::{
    CudaOptions, DeviceLoopMode, Provider, RuntimeConfig, TensorRtOptions,
};
use bevy_helios::prelude::HeliosError;

struct Args {
    model: PathBuf,
    trt: TensorRtOptions,
}

fn parse_args() -> Result<Args, String> {
    let mut model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/helios-tiny");
    let mut trt = TensorRtOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model = PathBuf::from(value()?),
            "--cache" => trt.cache_dir = Some(PathBuf::from(value()?)),
            "--fp16" => trt.fp16 = true,
            "--no-fp16" => trt.fp16 = false,
            "--bf16" => trt.bf16 = true,
            "--workspace" => {
                trt.max_workspace_bytes = Some(value()?.parse().map_err(|e| format!("{e}"))?)
            }
            "--device" => trt.device_id = value()?.parse().map_err(|e| format!("{e}"))?,
            "-h" | "--help" => {
                return Err(
                    "usage: prepare --model DIR --cache DIR [--bf16] [--no-fp16] \
                            [--workspace BYTES] [--device N]"
                        .into(),
                );
            }
            other => return Err(format!("unknown flag {other} (see --help)")),
        }
    }
    if trt.cache_dir.is_none() {
        return Err("--cache DIR is required: TensorRT keeps its engines there".into());
    }
    Ok(Args { model, trt })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let device_id = args.trt.device_id;
    let config = RuntimeConfig {
        providers: vec![Provider::TensorRt(args.trt.clone())],
        device_loop: DeviceLoopMode::Off,
        ..RuntimeConfig::default()
    };
    println!(
        "preparing TensorRT engines for {} into {}",
        args.model.display(),
        args.trt.cache_dir.clone().unwrap_or_default().display()
    );
    let mut progress = |event: PrepareProgress| match event {
        PrepareProgress::Started { index, total, key } => {
            println!("[{}/{total}] {key}: building ...", index + 1)
        }
        PrepareProgress::Finished {
            index,
            total,
            key,
            seconds,
        } => println!("[{}/{total}] {key}: ready in {seconds:.1} s", index + 1),
    };
    match prepare(&args.model, &config, &mut progress) {
        Ok(report) => {
            let total: f64 = report.graphs.iter().map(|(_, s)| s).sum();
            println!(
                "done: {} graphs in {total:.1} s; {} records them for the game",
                report.graphs.len(),
                report.cache_dir.join(RECORD_FILE).display()
            );
            ExitCode::SUCCESS
        }
        Err(HeliosError::ProviderUnavailable { reason, .. }) => {
            println!("TensorRT is not available: {reason}");
            println!(
                "no engines were built; {}",
                fallback(&args.model, device_id)
            );
            ExitCode::from(2)
        }
        Err(e) => {
            println!("prepare failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// Which provider the game would use instead: the rest of the default chain, tried on the model.
fn fallback(model: &std::path::Path, device_id: i32) -> String {
    if let Err(e) = ModelManifest::load(model) {
        return format!("the model does not load either: {e}");
    }
    let config = RuntimeConfig {
        providers: vec![
            Provider::Cuda(CudaOptions {
                device_id,
                ..CudaOptions::default()
            }),
            Provider::Cpu,
        ],
        device_loop: DeviceLoopMode::Off,
        ..RuntimeConfig::default()
    };
    match HeliosModel::load(model, &config) {
        Ok(m) if m.provider().active == "CUDA" => {
            "the game will use CUDA (TensorRT is skipped at load and reported in HeliosStatus)"
                .into()
        }
        Ok(m) => format!(
            "CUDA is not available either; the game will use {}",
            m.provider()
        ),
        Err(e) => format!("the model does not load on CUDA or the CPU: {e}"),
    }
}
