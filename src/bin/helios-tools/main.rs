//! `helios-tools`: the command-line tools of bevy_helios, on the engine-free core (no Bevy).
//!
//! ```sh
//! cargo build --release --no-default-features --features tools --bin helios-tools
//! target/release/helios-tools --help
//! target/release/helios-tools batch-generate --model models/helios-nano --jobs jobs.tsv --out out/eval
//! target/release/helios-tools prepare --model models/helios-tiny --cache trt-cache
//! target/release/helios-tools fused-check --model tests/fixtures/helios-tiny-fused --provider cuda
//! target/release/helios-tools gpu-bench --model models/helios-tiny --provider cpu --chunks 3
//! ```
//!
//! One module per subcommand; each documents its output and exit status. Bad arguments exit 1, as the
//! examples these tools came from did (`prepare` keeps 2 for "TensorRT unavailable").
#![expect(clippy::print_stdout, reason = "a command-line tool reports on stdout")]

mod batch_generate;
mod fused_check;
mod gpu_bench;
mod prepare;

use std::path::PathBuf;
use std::process::ExitCode;

use bevy_helios::core::runtime::Provider;
use clap::{Parser, Subcommand};

/// Command-line tools of bevy_helios: batch generation for evaluations, TensorRT engine building, fused
/// operator checks and the GPU benchmark.
#[derive(Parser, Debug)]
#[command(name = "helios-tools", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once at start and consumed"
)]
enum Command {
    /// Many short streams from a jobs file, written as raw RGB (tools/eval drives it).
    BatchGenerate(batch_generate::Args),
    /// Builds a model's TensorRT engines ahead of time (exit 2 without TensorRT).
    Prepare(prepare::Args),
    /// Checks a model's denoiser graphs on a GPU provider against the CPU provider.
    FusedCheck(fused_check::Args),
    /// Benchmarks the chunk loop: per-chunk time, FPS, time to first frame, allocations.
    GpuBench(gpu_bench::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `--help` and `--version` exit 0; bad arguments exit 1.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::BatchGenerate(args) => batch_generate::run(args),
        Command::Prepare(args) => prepare::run(args),
        Command::FusedCheck(args) => fused_check::run(args),
        Command::GpuBench(args) => gpu_bench::run(args),
    }
}

/// A path under this crate's directory: the default model directories.
fn crate_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A comma-separated provider chain (`trt,cuda,cpu`).
#[derive(Clone, Debug)]
struct ProviderList(Vec<Provider>);

fn parse_providers(list: &str) -> Result<ProviderList, String> {
    list.split(',')
        .map(|p| Provider::parse(p).ok_or_else(|| format!("unknown provider `{p}`")))
        .collect::<Result<_, _>>()
        .map(ProviderList)
}
