//! Execution providers: the configured chain (TensorRT → CUDA → CPU by default), each registered with
//! `error_on_failure` so a missing library or device is reported instead of ort's silent CPU fallback.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ort::ep::{self, ExecutionProviderDispatch};
use serde::{Deserialize, Serialize};

/// TensorRT options.
///
/// TensorRT compiles each graph into an engine, which takes minutes for the real model. The game never does
/// that on its own: with `build_engines` off (the default) the provider is used only when the `prepare`
/// example has built this model's engines into `cache_dir` (it leaves a record there, see
/// [`crate::core::runtime::prepare`]); otherwise it is skipped with a reason and the chain moves on to CUDA.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TensorRtOptions {
    /// CUDA device.
    pub device_id: i32,
    /// Allow fp16 kernels.
    pub fp16: bool,
    /// Allow bf16 kernels.
    pub bf16: bool,
    /// Directory for engine and timing caches. Required: without it the provider is skipped.
    pub cache_dir: Option<PathBuf>,
    /// Builder workspace limit in bytes (None: TensorRT's default).
    pub max_workspace_bytes: Option<usize>,
    /// Capture CUDA graphs.
    pub cuda_graph: bool,
    /// Let session creation build missing engines (what `prepare` sets). Off: use TensorRT only when
    /// `prepare` recorded engines for this model and these options in `cache_dir`.
    pub build_engines: bool,
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
            build_engines: false,
        }
    }
}

/// CUDA options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CudaOptions {
    /// CUDA device.
    pub device_id: i32,
    /// TF32 tensor cores for f32 matmuls/convs of graphs without a per-graph choice (see
    /// [`GraphOptions`]). ONNX Runtime 1.31 turns TF32 on by default; we keep it off unless asked, so f32
    /// graphs compute in f32.
    pub tf32: bool,
    /// Arena limit in bytes (the "GPU budget").
    pub memory_limit: Option<usize>,
    /// Capture CUDA graphs for graphs without a per-graph choice (static shapes only; see [`GraphOptions`]).
    pub cuda_graph: bool,
    /// Grow ONNX Runtime's device memory arenas by exactly what a request needs (`kSameAsRequested`) rather
    /// than by doubling (ONNX Runtime's own default, `kNextPowerOfTwo`). On by default: on the 14B model it
    /// lowered the peak by 7.9 GB (71.1 to 63.2 GB) at the same chunk time (H200, BENCHMARKS.md).
    pub arena_exact_growth: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        Self {
            device_id: 0,
            tf32: false,
            memory_limit: None,
            cuda_graph: false,
            arena_exact_growth: true,
        }
    }
}

/// Per-graph choices that override the provider's options, keyed in [`RuntimeConfig::graphs`] by graph key
/// (`vae_decoder`) or by a prefix ending in `*` (`denoiser_*`).
///
/// [`RuntimeConfig::graphs`]: crate::core::runtime::RuntimeConfig::graphs
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphOptions {
    /// TF32 for this graph's f32 matmuls and convolutions (CUDA, and CUDA under TensorRT).
    pub tf32: Option<bool>,
    /// CUDA graph capture for this graph. ONNX Runtime then needs every input and output bound to device
    /// memory at fixed addresses and no node on the CPU; the device loop binds that way.
    pub cuda_graph: Option<bool>,
}

impl GraphOptions {
    /// Fills the fields this one leaves open from `other`.
    pub fn or(self, other: GraphOptions) -> GraphOptions {
        GraphOptions {
            tf32: self.tf32.or(other.tf32),
            cuda_graph: self.cuda_graph.or(other.cuda_graph),
        }
    }

    /// Built-in choices per graph, used where the configuration says nothing:
    ///
    /// | graphs | TF32 | why |
    /// |---|---|---|
    /// | `vae_*` (f32 VAE) | on | the reference decodes with cuDNN convolutions, where torch allows TF32 by default; ~2-3x faster convs |
    /// | `denoiser_*` | provider default (off) | bf16 matmuls ignore it; the reference's fp32 islands run with torch's matmul TF32 off |
    /// | helper graphs (`pyramid_*`, `dmd_step_*`, `history_*`) | provider default (off) | elementwise; exact f32 |
    pub fn builtin(key: &str) -> GraphOptions {
        if key.starts_with("vae_") {
            GraphOptions {
                tf32: Some(true),
                cuda_graph: None,
            }
        } else {
            GraphOptions::default()
        }
    }

    /// The configured options for `key`: an exact entry, else the longest matching `prefix*` entry.
    pub fn lookup(map: &BTreeMap<String, GraphOptions>, key: &str) -> GraphOptions {
        if let Some(exact) = map.get(key) {
            return *exact;
        }
        map.iter()
            .filter_map(|(pattern, o)| {
                let prefix = pattern.strip_suffix('*')?;
                key.starts_with(prefix).then_some((prefix.len(), *o))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, o)| o)
            .unwrap_or_default()
    }
}

/// One execution provider of the chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Provider {
    /// NVIDIA TensorRT (needs libnvinfer 10), with CUDA for the nodes TensorRT does not take.
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

    /// Whether tensors of this provider live in GPU memory.
    pub fn is_gpu(&self) -> bool {
        !matches!(self, Provider::Cpu)
    }

    /// CUDA device of a GPU provider.
    pub fn device_id(&self) -> i32 {
        match self {
            Provider::TensorRt(o) => o.device_id,
            Provider::Cuda(o) => o.device_id,
            Provider::Cpu => 0,
        }
    }

    /// The effective (TF32, CUDA graph) for a graph: `configured` (per-graph settings), then
    /// [`GraphOptions::builtin`], then this provider's own options.
    pub fn resolve(&self, key: &str, configured: GraphOptions) -> (bool, bool) {
        let o = configured.or(GraphOptions::builtin(key));
        match self {
            Provider::TensorRt(t) => (
                o.tf32.unwrap_or(false),
                o.cuda_graph.unwrap_or(t.cuda_graph),
            ),
            Provider::Cuda(c) => (
                o.tf32.unwrap_or(c.tf32),
                o.cuda_graph.unwrap_or(c.cuda_graph),
            ),
            Provider::Cpu => (false, false),
        }
    }

    fn cuda(o: &CudaOptions, tf32: bool, cuda_graph: bool) -> ep::CUDA {
        let mut cuda = ep::CUDA::default()
            .with_device_id(o.device_id)
            .with_tf32(tf32)
            .with_cuda_graph(cuda_graph);
        if let Some(limit) = o.memory_limit {
            cuda = cuda.with_memory_limit(limit);
        }
        if o.arena_exact_growth {
            cuda = cuda.with_arena_extend_strategy(ep::ArenaExtendStrategy::SameAsRequested);
        }
        cuda
    }

    /// The ort dispatches for one graph, each set to fail loudly; empty for CPU (ort's built-in default).
    /// TensorRT comes with CUDA behind it for the nodes TensorRT does not take.
    pub(crate) fn dispatch(&self, tf32: bool, cuda_graph: bool) -> Vec<ExecutionProviderDispatch> {
        match self {
            Provider::TensorRt(o) => {
                let mut trt = ep::TensorRT::default()
                    .with_device_id(o.device_id)
                    .with_fp16(o.fp16)
                    .with_bf16(o.bf16)
                    .with_cuda_graph(cuda_graph);
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
                vec![
                    trt.build().error_on_failure(),
                    // ONNX Runtime's own arena growth behind TensorRT: exact growth was only measured on CUDA.
                    Self::cuda(
                        &CudaOptions {
                            device_id: o.device_id,
                            arena_exact_growth: false,
                            ..CudaOptions::default()
                        },
                        tf32,
                        false,
                    )
                    .build()
                    .error_on_failure(),
                ]
            }
            Provider::Cuda(o) => vec![Self::cuda(o, tf32, cuda_graph).build().error_on_failure()],
            Provider::Cpu => Vec::new(),
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
