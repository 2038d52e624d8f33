//! Weights shared by the denoiser stage sessions (the fused GPU export's `denoiser_weights.safetensors`).
//!
//! The three pyramid stages are three static-shape graphs over the same transformer. Left alone, ONNX
//! Runtime would load the weights once per session: 3 × 28.6 GB for the 14B model, more than an 80 GB card
//! holds. Here they are read once, tensor by tensor, into device memory and handed to every stage session
//! with `AddInitializer`, which ONNX Runtime uses in place when the tensor already lives on the device the
//! graph plans it on.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use half::bf16;
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::{DynTensor, DynValue, Tensor};
use safetensors::Dtype;

use super::binding::{Copier, identity_model, ort_err};
use super::provider::Provider;
use crate::core::manifest::DType;
use crate::error::HeliosError;

/// Largest safetensors header accepted (the 14B model's is about 100 kB).
const MAX_HEADER_BYTES: u64 = 64 << 20;

/// The shared tensors, in device memory, and what keeps that memory alive.
pub(crate) struct SharedWeights {
    /// `(initializer name, tensor)`; declared before `_owner` so the tensors go first.
    tensors: Vec<(String, Arc<DynValue>)>,
    bytes: u64,
    /// The session whose device allocator holds the tensors' memory.
    _owner: Session,
}

impl std::fmt::Debug for SharedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedWeights")
            .field("tensors", &self.tensors.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> HeliosError {
    HeliosError::ModelCorrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> HeliosError + '_ {
    move |source| HeliosError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl SharedWeights {
    /// Reads every tensor of the safetensors file at `path` into `provider`'s device memory.
    pub(crate) fn load(path: &Path, provider: &Provider) -> Result<Self, HeliosError> {
        let mut file = File::open(path).map_err(|source| HeliosError::ModelMissing {
            path: path.to_path_buf(),
            source,
        })?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(io(path))?;
        let header_len = u64::from_le_bytes(len);
        if header_len > MAX_HEADER_BYTES {
            return Err(corrupt(
                path,
                format!("safetensors header of {header_len} bytes"),
            ));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(io(path))?;
        let metadata: safetensors::tensor::Metadata = serde_json::from_slice(&header)
            .map_err(|e| corrupt(path, format!("safetensors header: {e}")))?;
        let data_start = 8 + header_len;
        let file_len = file.metadata().map_err(io(path))?.len();
        let mut entries: Vec<_> = metadata.tensors().into_iter().collect();
        // File order: sequential reads.
        entries.sort_by_key(|(_, info)| info.data_offsets.0);

        let owner = owner_session(provider)?;
        let memory = MemoryInfo::new(
            AllocationDevice::CUDA,
            provider.device_id(),
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(ort_err("CUDA memory info"))?;
        let allocator =
            Allocator::new(&owner, memory).map_err(ort_err("shared weights allocator"))?;
        let mut copier = Copier::new(provider);
        let mut tensors = Vec::with_capacity(entries.len());
        let mut bytes = 0u64;
        for (name, info) in entries {
            let (begin, end) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
            if data_start + end > file_len {
                return Err(corrupt(
                    path,
                    format!("tensor `{name}` ends past the end of the file"),
                ));
            }
            let shape = info.shape.clone();
            let count: usize = shape.iter().product();
            file.seek(SeekFrom::Start(data_start + begin))
                .map_err(io(path))?;
            let (host, dtype): (DynTensor, DType) = match info.dtype {
                Dtype::BF16 => {
                    let mut data = vec![bf16::ZERO; count];
                    read_into(&mut file, bytemuck::cast_slice_mut(&mut data), end - begin)
                        .map_err(|e| corrupt(path, format!("tensor `{name}`: {e}")))?;
                    (
                        Tensor::from_array((shape.clone(), data))
                            .map_err(ort_err(&name))?
                            .upcast(),
                        DType::Bf16,
                    )
                }
                Dtype::F32 => {
                    let mut data = vec![0f32; count];
                    read_into(&mut file, bytemuck::cast_slice_mut(&mut data), end - begin)
                        .map_err(|e| corrupt(path, format!("tensor `{name}`: {e}")))?;
                    (
                        Tensor::from_array((shape.clone(), data))
                            .map_err(ort_err(&name))?
                            .upcast(),
                        DType::F32,
                    )
                }
                other => {
                    return Err(corrupt(
                        path,
                        format!("tensor `{name}` is {other:?}; shared weights are BF16 or F32"),
                    ));
                }
            };
            let mut device = DynTensor::new(
                &allocator,
                super::binding::element_type(dtype),
                shape.clone(),
            )
            .map_err(|e| {
                HeliosError::inference(&format!("allocating shared weight `{name}`"), e)
            })?;
            let transfer = copier.to_device(format!("uploading `{name}`"), dtype, &mut device)?;
            copier.upload_tensor(transfer, &host)?;
            bytes += end - begin;
            tensors.push((name, Arc::new(device.into_dyn())));
        }
        tracing::info!(
            "shared denoiser weights: {} tensors, {:.2} GB on {}",
            tensors.len(),
            bytes as f64 / 1e9,
            provider.name()
        );
        Ok(Self {
            tensors,
            bytes,
            _owner: owner,
        })
    }

    /// Hands every shared tensor to a session being built.
    pub(crate) fn apply(&self, mut builder: SessionBuilder) -> Result<SessionBuilder, String> {
        for (name, value) in &self.tensors {
            builder = builder
                .with_initializer(name, Arc::clone(value))
                .map_err(|e| format!("shared weight `{name}`: {e}"))?;
        }
        Ok(builder)
    }

    /// Bytes of device memory the shared tensors take.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

fn read_into(file: &mut File, buf: &mut [u8], want: u64) -> Result<(), String> {
    if buf.len() as u64 != want {
        return Err(format!(
            "{want} bytes in the file for {} bytes of tensor",
            buf.len()
        ));
    }
    file.read_exact(buf).map_err(|e| e.to_string())
}

/// A session on `provider` whose device allocator holds the shared tensors. Its arena grows by exactly
/// what is asked (28.6 GB in power-of-two steps could overshoot by gigabytes).
fn owner_session(provider: &Provider) -> Result<Session, HeliosError> {
    let env = super::environment()?;
    let what = "shared weights owner session";
    let device = provider.device_id();
    let cuda = ort::ep::CUDA::default()
        .with_device_id(device)
        .with_arena_extend_strategy(ort::ep::ArenaExtendStrategy::SameAsRequested)
        .build()
        .error_on_failure();
    Session::builder(&env)
        .map_err(ort_err(what))?
        .with_optimization_level(GraphOptimizationLevel::Disable)
        .map_err(ort_err(what))?
        .with_execution_providers([cuda])
        .map_err(ort_err(what))?
        .commit_from_memory(&identity_model(DType::U8))
        .map_err(ort_err(what))
}
