//! Device tensors and host staging for IoBinding: the building blocks of the device-resident loop
//! ([`super::device_loop`]).
//!
//! A [`DeviceMemory`] allocates tensors where the model's provider computes: CUDA memory under CUDA and
//! TensorRT, host memory under the CPU provider, which then runs the very same binding code (that is how
//! the loop is tested without a GPU). A [`HostTensor`] stages the few things that cross between host and
//! device, converting between the f32 the sampler works in and the tensor's dtype from the manifest
//! (f32, bf16, f16, i64, u8), into buffers allocated once. A [`Transfer`] moves one tensor across.
//!
//! Transfers run a one-node `Identity` graph of our own (opset 21) on the model's provider rather than
//! ort's `copy_into`: ort's built-in copy graph is an old-opset `Identity` that rejects bf16 tensors
//! ("Type 'tensor(bfloat16)' ... is invalid"), and it rebuilds a lookup key on every call.

use half::{bf16, f16};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{IoBinding, Session};
use ort::value::{DynTensor, TensorElementType};

use super::provider::Provider;
use crate::core::manifest::{DType, TensorSpec};
use crate::error::HeliosError;

/// The ort element type of a manifest dtype.
pub(crate) fn element_type(dtype: DType) -> TensorElementType {
    match dtype {
        DType::F32 => TensorElementType::Float32,
        DType::Bf16 => TensorElementType::Bfloat16,
        DType::F16 => TensorElementType::Float16,
        DType::I64 => TensorElementType::Int64,
        DType::U8 => TensorElementType::Uint8,
        DType::F64 => TensorElementType::Float64,
    }
}

/// Wraps an ort error with what was being done.
pub(crate) fn ort_err<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> HeliosError + '_ {
    move |e| HeliosError::inference(what, e)
}

/// Allocates tensors in the memory a session's provider computes in.
pub struct DeviceMemory {
    allocator: Allocator,
    on_gpu: bool,
}

impl std::fmt::Debug for DeviceMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceMemory")
            .field("on_gpu", &self.on_gpu)
            .finish()
    }
}

impl DeviceMemory {
    /// CUDA device memory (through `session`'s allocator) for GPU providers, host memory for the CPU.
    pub fn for_session(session: &Session, provider: &Provider) -> Result<Self, HeliosError> {
        if provider.is_gpu() {
            let info = MemoryInfo::new(
                AllocationDevice::CUDA,
                provider.device_id(),
                AllocatorType::Device,
                MemoryType::Default,
            )
            .map_err(ort_err("CUDA memory info"))?;
            let allocator =
                Allocator::new(session, info).map_err(ort_err("CUDA device allocator"))?;
            Ok(Self {
                allocator,
                on_gpu: true,
            })
        } else {
            Ok(Self {
                allocator: Allocator::default(),
                on_gpu: false,
            })
        }
    }

    /// Whether tensors live in GPU memory.
    pub fn on_gpu(&self) -> bool {
        self.on_gpu
    }

    /// An uninitialised tensor of `spec`'s dtype and shape.
    pub fn tensor(&self, spec: &TensorSpec) -> Result<DynTensor, HeliosError> {
        DynTensor::new(
            &self.allocator,
            element_type(spec.dtype),
            spec.shape.clone(),
        )
        .map_err(|e| HeliosError::inference(&format!("allocating `{}`", spec.name), e))
    }
}

/// A host tensor staging an upload or a download, with an f32 view for the sampler's side.
///
/// For f32 tensors the view is the tensor itself; for bf16 and f16 it is a buffer of its own, converted
/// on [`Self::fill_f32`] and [`Self::read_f32`]. Nothing allocates after [`Self::new`].
pub struct HostTensor {
    what: String,
    tensor: DynTensor,
    dtype: DType,
    wide: Vec<f32>,
}

impl std::fmt::Debug for HostTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostTensor")
            .field("what", &self.what)
            .field("dtype", &self.dtype)
            .finish()
    }
}

impl HostTensor {
    /// A zeroed host tensor shaped and typed like `spec`; `what` names it in errors.
    pub fn new(what: impl Into<String>, spec: &TensorSpec) -> Result<Self, HeliosError> {
        let what = what.into();
        let tensor = DynTensor::new(
            &Allocator::default(),
            element_type(spec.dtype),
            spec.shape.clone(),
        )
        .map_err(ort_err(&what))?;
        let wide = match spec.dtype {
            DType::Bf16 | DType::F16 => vec![0f32; spec.len()],
            DType::F32 | DType::F64 | DType::I64 | DType::U8 => Vec::new(),
        };
        Ok(Self {
            what,
            tensor,
            dtype: spec.dtype,
            wide,
        })
    }

    /// The staged tensor.
    pub fn tensor(&self) -> &DynTensor {
        &self.tensor
    }

    /// The staged tensor, to bind as a copy's output.
    pub fn tensor_mut(&mut self) -> &mut DynTensor {
        &mut self.tensor
    }

    /// Lets `fill` write f32 values, then stores them in the tensor's dtype (bf16/f16 round to nearest).
    pub fn fill_f32(
        &mut self,
        fill: impl FnOnce(&mut [f32]) -> Result<(), HeliosError>,
    ) -> Result<(), HeliosError> {
        let what = self.what.as_str();
        match self.dtype {
            DType::F32 => {
                let (_, data) = self
                    .tensor
                    .try_extract_tensor_mut::<f32>()
                    .map_err(ort_err(what))?;
                fill(data)
            }
            DType::Bf16 => {
                fill(&mut self.wide)?;
                let (_, data) = self
                    .tensor
                    .try_extract_tensor_mut::<bf16>()
                    .map_err(ort_err(what))?;
                for (d, s) in data.iter_mut().zip(&self.wide) {
                    *d = bf16::from_f32(*s);
                }
                Ok(())
            }
            DType::F16 => {
                fill(&mut self.wide)?;
                let (_, data) = self
                    .tensor
                    .try_extract_tensor_mut::<f16>()
                    .map_err(ort_err(what))?;
                for (d, s) in data.iter_mut().zip(&self.wide) {
                    *d = f16::from_f32(*s);
                }
                Ok(())
            }
            DType::F64 | DType::I64 | DType::U8 => Err(HeliosError::Unsupported {
                what: format!("{what} is {:?}, not an f32/bf16/f16 tensor", self.dtype),
            }),
        }
    }

    /// Writes a scalar (or fills every element) in the tensor's dtype: f64 for floats, exact in F64 and
    /// rounded to nearest otherwise; i64 for integers.
    pub fn set_scalar(&mut self, float: f64, int: i64) -> Result<(), HeliosError> {
        let what = self.what.as_str();
        match self.dtype {
            DType::F64 => {
                let (_, data) = self
                    .tensor
                    .try_extract_tensor_mut::<f64>()
                    .map_err(ort_err(what))?;
                data.fill(float);
                Ok(())
            }
            DType::I64 => {
                let (_, data) = self
                    .tensor
                    .try_extract_tensor_mut::<i64>()
                    .map_err(ort_err(what))?;
                data.fill(int);
                Ok(())
            }
            DType::U8 => Err(HeliosError::Unsupported {
                what: format!("{what} is U8, not a scalar input"),
            }),
            _ => self.fill_f32(|d| {
                d.fill(float as f32);
                Ok(())
            }),
        }
    }

    /// Reads the tensor as f32 into `out` (same element count).
    pub fn read_f32(&mut self, out: &mut [f32]) -> Result<(), HeliosError> {
        let what = self.what.as_str();
        match self.dtype {
            DType::F32 => {
                let (_, data) = self
                    .tensor
                    .try_extract_tensor::<f32>()
                    .map_err(ort_err(what))?;
                out.copy_from_slice(data);
            }
            DType::Bf16 => {
                let (_, data) = self
                    .tensor
                    .try_extract_tensor::<bf16>()
                    .map_err(ort_err(what))?;
                for (d, s) in out.iter_mut().zip(data) {
                    *d = s.to_f32();
                }
            }
            DType::F16 => {
                let (_, data) = self
                    .tensor
                    .try_extract_tensor::<f16>()
                    .map_err(ort_err(what))?;
                for (d, s) in out.iter_mut().zip(data) {
                    *d = s.to_f32();
                }
            }
            DType::F64 | DType::I64 | DType::U8 => {
                return Err(HeliosError::Unsupported {
                    what: format!("{what} is {:?}, not an f32/bf16/f16 tensor", self.dtype),
                });
            }
        }
        Ok(())
    }

    /// The bytes of a U8 tensor.
    pub fn bytes(&self) -> Result<&[u8], HeliosError> {
        self.tensor
            .try_extract_tensor::<u8>()
            .map(|(_, d)| d)
            .map_err(ort_err(&self.what))
    }
}

/// ONNX `TensorProto.DataType` of a manifest dtype.
fn onnx_elem_type(dtype: DType) -> u64 {
    match dtype {
        DType::F32 => 1,
        DType::U8 => 2,
        DType::I64 => 7,
        DType::F16 => 10,
        DType::F64 => 11,
        DType::Bf16 => 16,
    }
}

/// Minimal protobuf writer for the copy graph.
struct Proto(Vec<u8>);

impl Proto {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn int(&mut self, field: u64, v: u64) {
        self.varint(field << 3);
        self.varint(v);
    }
    fn bytes(&mut self, field: u64, b: &[u8]) {
        self.varint((field << 3) | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn message(&mut self, field: u64, build: impl FnOnce(&mut Proto)) {
        let mut inner = Proto(Vec::new());
        build(&mut inner);
        self.bytes(field, &inner.0);
    }
}

/// The bytes of an ONNX model `y = Identity(x)` for one element type and any shape (IR 10, opset 21).
pub(crate) fn identity_model(dtype: DType) -> Vec<u8> {
    let value_info = |p: &mut Proto, name: &str| {
        p.bytes(1, name.as_bytes());
        // TypeProto { tensor_type { elem_type } }: no shape, so one session copies tensors of any shape.
        p.message(2, |t| t.message(1, |tt| tt.int(1, onnx_elem_type(dtype))));
    };
    let mut m = Proto(Vec::new());
    m.int(1, 10); // ir_version
    m.message(7, |g| {
        g.message(1, |n| {
            n.bytes(1, b"x");
            n.bytes(2, b"y");
            n.bytes(4, b"Identity");
        });
        g.bytes(2, b"helios_copy");
        g.message(11, |v| value_info(v, "x"));
        g.message(12, |v| value_info(v, "y"));
    });
    m.message(8, |o| {
        o.bytes(1, b"");
        o.int(2, 21);
    });
    m.0
}

/// Copy sessions on the model's provider, one per element type, each serving many [`Transfer`]s.
pub struct Copier {
    provider: Provider,
    sessions: Vec<(DType, Session)>,
}

impl std::fmt::Debug for Copier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Copier")
            .field("provider", &self.provider.name())
            .field(
                "dtypes",
                &self.sessions.iter().map(|(d, _)| *d).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// One bound copy: which [`Copier`] session runs it and the binding (the device side is bound once; an
/// upload rebinds its host input on each call, because binding is where ONNX Runtime copies a host input
/// to the device).
pub struct Transfer {
    what: String,
    session: usize,
    binding: IoBinding,
}

impl std::fmt::Debug for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfer")
            .field("what", &self.what)
            .finish()
    }
}

impl Copier {
    /// Copies run on `provider` (CUDA under TensorRT: a TensorRT engine per copy would be absurd).
    pub fn new(provider: &Provider) -> Self {
        let provider = match provider {
            Provider::TensorRt(o) => Provider::Cuda(super::provider::CudaOptions {
                device_id: o.device_id,
                ..Default::default()
            }),
            other => other.clone(),
        };
        Self {
            provider,
            sessions: Vec::new(),
        }
    }

    fn session(&mut self, what: &str, dtype: DType) -> Result<usize, HeliosError> {
        if let Some(i) = self.sessions.iter().position(|(d, _)| *d == dtype) {
            return Ok(i);
        }
        let env = super::environment()?;
        let mut builder = Session::builder(&env)
            .map_err(ort_err(what))?
            .with_optimization_level(GraphOptimizationLevel::Disable)
            .map_err(ort_err(what))?
            .with_intra_threads(1)
            .map_err(ort_err(what))?
            .with_inter_threads(1)
            .map_err(ort_err(what))?;
        let dispatch = self.provider.dispatch(false, false);
        if !dispatch.is_empty() {
            builder = builder
                .with_execution_providers(dispatch)
                .map_err(ort_err(what))?;
        }
        let session = builder
            .commit_from_memory(&identity_model(dtype))
            .map_err(ort_err(what))?;
        self.sessions.push((dtype, session));
        Ok(self.sessions.len() - 1)
    }

    /// Host → device: `device` is written by [`Self::upload`].
    pub fn to_device(
        &mut self,
        what: impl Into<String>,
        dtype: DType,
        device: &mut DynTensor,
    ) -> Result<Transfer, HeliosError> {
        let what = what.into();
        let session = self.session(&what, dtype)?;
        let mut binding = self.sessions[session]
            .1
            .create_binding()
            .map_err(ort_err(&what))?;
        binding.bind_output("y", device).map_err(ort_err(&what))?;
        Ok(Transfer {
            what,
            session,
            binding,
        })
    }

    /// Device → host (or device → device): `from` is read and `to` written by [`Self::run`].
    pub fn between(
        &mut self,
        what: impl Into<String>,
        dtype: DType,
        from: &DynTensor,
        to: &mut DynTensor,
    ) -> Result<Transfer, HeliosError> {
        let what = what.into();
        let session = self.session(&what, dtype)?;
        let mut binding = self.sessions[session]
            .1
            .create_binding()
            .map_err(ort_err(&what))?;
        binding.bind_input("x", from).map_err(ort_err(&what))?;
        binding.bind_output("y", to).map_err(ort_err(&what))?;
        Ok(Transfer {
            what,
            session,
            binding,
        })
    }

    /// Copies `host` to the device tensor of a [`Self::to_device`] transfer; returns when it is done.
    pub fn upload(
        &mut self,
        transfer: &mut Transfer,
        host: &HostTensor,
    ) -> Result<(), HeliosError> {
        transfer
            .binding
            .bind_input("x", host.tensor())
            .map_err(ort_err(&transfer.what))?;
        self.run(transfer)
    }

    /// Runs a transfer as bound; returns when the copy is done.
    pub fn run(&mut self, transfer: &Transfer) -> Result<(), HeliosError> {
        let session = &mut self.sessions[transfer.session].1;
        let outputs = session
            .run_binding(&transfer.binding)
            .map_err(ort_err(&transfer.what))?;
        drop(outputs);
        Ok(())
    }

    /// Number of copy sessions (one per element type used).
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dtype: DType, shape: &[usize]) -> TensorSpec {
        TensorSpec {
            name: "t".into(),
            shape: shape.to_vec(),
            dtype,
        }
    }

    #[test]
    fn host_tensors_convert_and_round_trip_through_device_memory() -> Result<(), HeliosError> {
        super::super::environment()?;
        for dtype in [DType::F32, DType::Bf16, DType::F16] {
            let s = spec(dtype, &[2, 3]);
            let mut up = HostTensor::new("up", &s)?;
            up.fill_f32(|d| {
                for (i, v) in d.iter_mut().enumerate() {
                    *v = 1.0 + i as f32 / 1024.0;
                }
                Ok(())
            })?;
            let memory = DeviceMemory {
                allocator: Allocator::default(),
                on_gpu: false,
            };
            let mut device = memory.tensor(&s)?;
            let mut copier = Copier::new(&Provider::Cpu);
            let mut up_copy = copier.to_device("up", dtype, &mut device)?;
            copier.upload(&mut up_copy, &up)?;
            let mut down = HostTensor::new("down", &s)?;
            let down_copy = copier.between("down", dtype, &device, &mut down.tensor)?;
            copier.run(&down_copy)?;
            let mut out = [0f32; 6];
            down.read_f32(&mut out)?;
            for (i, v) in out.iter().enumerate() {
                let want =
                    crate::core::sampler::pyramid::round_value(dtype, 1.0 + i as f32 / 1024.0);
                assert_eq!(*v, want, "{dtype:?} element {i} after a round trip");
            }
        }
        let mut t = HostTensor::new("steps", &spec(DType::I64, &[1]))?;
        t.set_scalar(0.0, 937)?;
        assert!(t.fill_f32(|_| Ok(())).is_err(), "i64 has no f32 view");
        // σ in f64 must cross exactly (the GPU export's dmd_step inputs).
        let s = spec(DType::F64, &[1]);
        let sigma = 0.123_456_789_012_345_67_f64;
        let mut host = HostTensor::new("sigma", &s)?;
        host.set_scalar(sigma, 0)?;
        let memory = DeviceMemory {
            allocator: Allocator::default(),
            on_gpu: false,
        };
        let mut device = memory.tensor(&s)?;
        let mut copier = Copier::new(&Provider::Cpu);
        let mut copy = copier.to_device("sigma", DType::F64, &mut device)?;
        copier.upload(&mut copy, &host)?;
        let (_, back) = device
            .try_extract_tensor::<f64>()
            .map_err(ort_err("sigma"))?;
        assert_eq!(back, &[sigma], "f64 scalars must not be rounded");
        Ok(())
    }
}
