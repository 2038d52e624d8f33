//! `helios-tools prepare`: builds a model's TensorRT engines ahead of time, so the game never builds them while loading.
//!
//! Look at: one line per graph with the seconds its engine took, then the record it leaves in the cache
//! directory. Without TensorRT it says so, says which provider the game will use instead, and exits 2.
//!
//! ```sh
//! cargo run --release --no-default-features --features tools --bin helios-tools -- prepare \
//!     --model models/helios-tiny --cache trt-cache
//! ```
//!
//! Exit status: 0 engines built, 1 bad arguments or model, 2 TensorRT unavailable.
use std::path::PathBuf;
use std::process::ExitCode;

use bevy_helios::core::manifest::ModelManifest;
use bevy_helios::core::model::HeliosModel;
use bevy_helios::core::runtime::prepare::{PrepareProgress, RECORD_FILE, prepare};
use bevy_helios::core::runtime::{
    CudaOptions, DeviceLoopMode, Provider, RuntimeConfig, TensorRtOptions,
};
use bevy_helios::prelude::HeliosError;

use crate::crate_path;

/// Flags of `prepare`.
#[derive(clap::Args, Debug)]
#[command(args_override_self = true)]
pub struct Args {
    /// Exported model directory.
    #[arg(long, value_name = "DIR", default_value_os_t = crate_path("models/helios-tiny"))]
    model: PathBuf,
    /// Engine and timing cache directory; give the game the same one in `TensorRtOptions::cache_dir`.
    #[arg(long, value_name = "DIR")]
    cache: PathBuf,
    /// Allow fp16 kernels (the default).
    #[arg(long, overrides_with = "no_fp16")]
    fp16: bool,
    /// Don't allow fp16 kernels.
    #[arg(long, overrides_with = "fp16")]
    no_fp16: bool,
    /// Allow bf16 kernels.
    #[arg(long)]
    bf16: bool,
    /// TensorRT builder workspace limit.
    #[arg(long, value_name = "BYTES")]
    workspace: Option<usize>,
    /// CUDA device.
    #[arg(long, value_name = "N", default_value_t = 0)]
    device: i32,
}

impl Args {
    /// The TensorRT options these flags ask for.
    fn trt(&self) -> TensorRtOptions {
        let defaults = TensorRtOptions::default();
        TensorRtOptions {
            device_id: self.device,
            fp16: !self.no_fp16 && (self.fp16 || defaults.fp16),
            bf16: self.bf16 || defaults.bf16,
            max_workspace_bytes: self.workspace.or(defaults.max_workspace_bytes),
            cache_dir: Some(self.cache.clone()),
            ..defaults
        }
    }
}

/// Builds the engines: exit status 0 built, 1 bad model, 2 TensorRT unavailable.
pub fn run(args: Args) -> ExitCode {
    let trt = args.trt();
    let device_id = trt.device_id;
    let config = RuntimeConfig {
        providers: vec![Provider::TensorRt(trt)],
        device_loop: DeviceLoopMode::Off,
        ..RuntimeConfig::default()
    };
    println!(
        "preparing TensorRT engines for {} into {}",
        args.model.display(),
        args.cache.display()
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
