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

use ort::session::builder::SessionBuilder;
use ort::value::{DynValue, TensorElementType};
use safetensors::Dtype;

use super::kernels::DeviceBuffer;
use super::provider::Provider;
use crate::core::limits::{MAX_TENSOR_ELEMENTS, check_elements};
use crate::error::{HeliosError, echo};

/// Largest safetensors header accepted (the 14B model's is about 100 kB).
const MAX_HEADER_BYTES: u64 = 64 << 20;

/// The shared tensors, in device memory this crate allocated (ONNX Runtime only takes a shared initializer
/// whose memory belongs to the caller).
pub(crate) struct SharedWeights {
    /// `(initializer name, tensor)`; declared before `_buffers` so the tensors go first.
    tensors: Vec<(String, Arc<DynValue>)>,
    /// The device memory under the tensors, freed when this is dropped (after every session).
    _buffers: Vec<DeviceBuffer>,
    bytes: u64,
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
        let data_start = 8 + header_len; // header_len is capped above
        let file_len = file.metadata().map_err(io(path))?.len();
        let mut entries: Vec<_> = metadata.tensors().into_iter().collect();
        // File order: sequential reads.
        entries.sort_by_key(|(_, info)| info.data_offsets.0);

        let device = provider.device_id();
        let gpu = |name: &str, e: String| HeliosError::ProviderUnavailable {
            provider: provider.name().into(),
            reason: format!("shared weight `{name}`: {e}"),
        };
        let mut tensors = Vec::with_capacity(entries.len());
        let mut buffers = Vec::with_capacity(entries.len());
        let mut bytes = 0u64;
        let mut host = Vec::new();
        for (name, info) in entries {
            let (begin, end) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
            if begin > end || data_start.saturating_add(end) > file_len {
                return Err(corrupt(
                    path,
                    format!(
                        "tensor `{}` has offsets {begin}..{end} outside the file",
                        echo(&name)
                    ),
                ));
            }
            let elem = match info.dtype {
                Dtype::BF16 => TensorElementType::Bfloat16,
                Dtype::F32 => TensorElementType::Float32,
                other => {
                    return Err(corrupt(
                        path,
                        format!("tensor `{name}` is {other:?}; shared weights are BF16 or F32"),
                    ));
                }
            };
            let count = check_elements(
                &format!("shared weight `{}` in {}", echo(&name), path.display()),
                &info.shape,
                MAX_TENSOR_ELEMENTS,
            )?;
            // count ≤ 2^31, so the byte size fits
            let want = count
                * if elem == TensorElementType::Float32 {
                    4
                } else {
                    2
                };
            if end - begin != want as u64 {
                return Err(corrupt(
                    path,
                    format!(
                        "tensor `{name}` has {} bytes for {count} values",
                        end - begin
                    ),
                ));
            }
            host.resize(want, 0u8);
            file.seek(SeekFrom::Start(data_start + begin))
                .map_err(io(path))?;
            file.read_exact(&mut host).map_err(io(path))?;
            let buffer = DeviceBuffer::upload(device, &host).map_err(|e| gpu(&name, e))?;
            let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
            let value = buffer
                .tensor(device, elem, &shape)
                .map_err(|e| gpu(&name, e))?;
            bytes += want as u64;
            buffers.push(buffer);
            tensors.push((name, Arc::new(value)));
        }
        tracing::info!(
            "shared denoiser weights: {} tensors, {:.2} GB on {}",
            tensors.len(),
            bytes as f64 / 1e9,
            provider.name()
        );
        Ok(Self {
            tensors,
            _buffers: buffers,
            bytes,
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
