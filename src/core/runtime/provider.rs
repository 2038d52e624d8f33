//! Execution providers: the configured chain (TensorRT → CUDA → CPU by default), each registered with
//! `error_on_failure` so a missing library or device is reported instead of ort's silent CPU fallback.

use std::path::PathBuf;

use ort::ep::{self, ExecutionProviderDispatch};
use serde::{Deserialize, Serialize};

/// TensorRT options (engines are built ahead of time by `prepare`; see the README).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TensorRtOptions {
    /// CUDA device.
    pub device_id: i32,
    /// Allow fp16 kernels.
    pub fp16: bool,
    /// Allow bf16 kernels.
    pub bf16: bool,
    /// Directory for engine and timing caches (None: no cache, engines rebuilt every start).
    pub cache_dir: Option<PathBuf>,
    /// Builder workspace limit in bytes (None: TensorRT's default).
    pub max_workspace_bytes: Option<usize>,
    /// Capture CUDA graphs.
    pub cuda_graph: bool,
}

impl Default for TensorRtOptions {
    fn default() -> Self {
        Self {
            device_id: 0,
            fp16: true,
            bf16: false,
            cache_dir: None,
            max_workspace_bytes: None,
            cuda_graph: false,
        }
    }
}

/// CUDA options.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CudaOptions {
    /// CUDA device.
    pub device_id: i32,
    /// TF32 tensor cores for f32 matmuls/convs (ONNX Runtime 1.31 turns this on by default; we keep it
    /// off unless asked, so f32 graphs compute in f32).
    pub tf32: bool,
    /// Arena limit in bytes (the "GPU budget").
    pub memory_limit: Option<usize>,
    /// Capture CUDA graphs (static shapes only).
    pub cuda_graph: bool,
}

/// One execution provider of the chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Provider {
    /// NVIDIA TensorRT (needs libnvinfer 10).
    TensorRt(TensorRtOptions),
    /// NVIDIA CUDA (needs the `onnxruntime-gpu` build and CUDA 13).
    Cuda(CudaOptions),
    /// ONNX Runtime's CPU provider; always available.
    Cpu,
}

impl Provider {
    /// Short name for logs and status.
    pub fn name(&self) -> &'static str {
        match self {
            Provider::TensorRt(_) => "TensorRT",
            Provider::Cuda(_) => "CUDA",
            Provider::Cpu => "CPU",
        }
    }

    /// The default chain: TensorRT, CUDA, CPU.
    pub fn default_chain() -> Vec<Provider> {
        vec![
            Provider::TensorRt(TensorRtOptions::default()),
            Provider::Cuda(CudaOptions::default()),
            Provider::Cpu,
        ]
    }

    /// Parses `trt`, `cuda` or `cpu` (command lines, env vars).
    pub fn parse(name: &str) -> Option<Provider> {
        match name.trim().to_ascii_lowercase().as_str() {
            "trt" | "tensorrt" => Some(Provider::TensorRt(TensorRtOptions::default())),
            "cuda" | "gpu" => Some(Provider::Cuda(CudaOptions::default())),
            "cpu" => Some(Provider::Cpu),
            _ => None,
        }
    }

    /// The ort dispatch for this provider, set to fail loudly; `None` for CPU (ort's built-in default).
    pub(crate) fn dispatch(&self) -> Option<ExecutionProviderDispatch> {
        match self {
            Provider::TensorRt(o) => {
                let mut trt = ep::TensorRT::default()
                    .with_device_id(o.device_id)
                    .with_fp16(o.fp16)
                    .with_bf16(o.bf16)
                    .with_cuda_graph(o.cuda_graph);
                if let Some(dir) = &o.cache_dir {
                    let dir = dir.display().to_string();
                    trt = trt
                        .with_engine_cache(true)
                        .with_engine_cache_path(dir.clone())
                        .with_timing_cache(true)
                        .with_timing_cache_path(dir);
                }
                if let Some(bytes) = o.max_workspace_bytes {
                    trt = trt.with_max_workspace_size(bytes);
                }
                Some(trt.build().error_on_failure())
            }
            Provider::Cuda(o) => {
                let mut cuda = ep::CUDA::default()
                    .with_device_id(o.device_id)
                    .with_tf32(o.tf32)
                    .with_cuda_graph(o.cuda_graph);
                if let Some(limit) = o.memory_limit {
                    cuda = cuda.with_memory_limit(limit);
                }
                Some(cuda.build().error_on_failure())
            }
            Provider::Cpu => None,
        }
    }
}

/// Which provider a model ended up on, and why the ones before it were skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderReport {
    /// Name of the provider in use.
    pub active: String,
    /// `(provider, reason)` for each provider tried before it.
    pub skipped: Vec<(String, String)>,
}

impl std::fmt::Display for ProviderReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.active)?;
        for (name, reason) in &self.skipped {
            write!(f, " ({name} skipped: {reason})")?;
        }
        Ok(())
    }
}
