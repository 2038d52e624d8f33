//! ONNX Runtime through `ort`: finding the library ([`dylib`]), the provider chain ([`provider`]), the
//! model's sessions ([`session`]), device memory and IoBinding ([`binding`]), the device-resident chunk
//! loop ([`device_loop`]), the fused `com.helios` operators of the GPU export ([`kernels`]) and building
//! TensorRT engines ahead of time ([`prepare`]).

pub mod binding;
pub mod device_loop;
pub mod dylib;
pub mod kernels;
pub mod prepare;
pub mod provider;
pub mod session;
mod weights;

use std::sync::OnceLock;

pub use device_loop::{DeviceLoop, DeviceLoopStats};
pub use dylib::{OrtLibrary, OrtSource};
pub use provider::{CudaOptions, GraphOptions, Provider, ProviderReport, TensorRtOptions};
pub use session::{DeviceLoopMode, GraphSession, OrtModel, RuntimeConfig};

use crate::error::HeliosError;

static ENVIRONMENT: OnceLock<Result<(ort::environment::Environment, OrtLibrary), String>> =
    OnceLock::new();

/// The process-wide ONNX Runtime environment, created on first use from the located library.
///
/// ONNX Runtime allows one environment per process and `ort::init_from` must come before any other
/// ort call, so this is the only place that touches either.
pub fn environment() -> Result<ort::environment::Environment, HeliosError> {
    ENVIRONMENT
        .get_or_init(|| {
            // The message alone: the error is wrapped in `RuntimeUnavailable` again below.
            let lib = dylib::locate().map_err(|e| match e {
                HeliosError::RuntimeUnavailable(message) => message,
                other => other.to_string(),
            })?;
            let env = ort::init_from(&lib.path)
                .map_err(|e| format!("loading {} failed: {e}", lib.path.display()))?
                .with_name("bevy_helios")
                .with_telemetry(false)
                .with_logger(std::sync::Arc::new(forward_ort_log))
                .build()
                .map_err(|e| format!("creating the ONNX Runtime environment failed: {e}"))?;
            tracing::info!(
                "ONNX Runtime from {} ({:?})",
                lib.path.display(),
                lib.source
            );
            Ok((env, lib))
        })
        .as_ref()
        .map(|(env, _)| env.clone())
        .map_err(|e| HeliosError::RuntimeUnavailable(e.clone()))
}

/// Forwards ONNX Runtime's log to `tracing` under the target `onnxruntime`, one level lower than ONNX
/// Runtime's own for its chatty levels: its INFO lines (arena growth, node placement) become `debug` so a
/// game's default log filter shows only warnings and errors. `RUST_LOG=onnxruntime=debug` brings them back.
fn forward_ort_log(
    level: ort::logging::LogLevel,
    category: &str,
    _id: &str,
    location: &str,
    message: &str,
) {
    use ort::logging::LogLevel;
    match level {
        LogLevel::Verbose => {
            tracing::trace!(target: "onnxruntime", "[{category}] {message} ({location})")
        }
        LogLevel::Info => {
            tracing::debug!(target: "onnxruntime", "[{category}] {message} ({location})")
        }
        LogLevel::Warning => tracing::warn!(target: "onnxruntime", "[{category}] {message}"),
        LogLevel::Error | LogLevel::Fatal => {
            tracing::error!(target: "onnxruntime", "[{category}] {message} ({location})")
        }
    }
}

/// Where the ONNX Runtime library in use came from (after [`environment`] succeeded).
pub fn library() -> Option<OrtLibrary> {
    ENVIRONMENT
        .get()
        .and_then(|r| r.as_ref().ok())
        .map(|(_, lib)| lib.clone())
}
