//! The `com.helios` operator domain: the fused element-wise and row-wise work of a Helios transformer block
//! (`docs/fused-ops.md`), registered on every session [`super::session`] builds.
//!
//! Graphs written by `tools/export/fused_graph.py` use these operators between their matrix products; other
//! graphs never mention the domain, so registering it costs them nothing. Each operator exists for f32 and
//! bf16 tensors and for the session's provider only: on CUDA and TensorRT the kernels of `helios_ops.cu`
//! (`cuda`) run on ONNX Runtime's stream, on the CPU provider the loops of `cpu`.

mod cpu;
mod cuda;
mod io;

pub(crate) use cuda::DeviceBuffer;

use half::bf16;
use ort::operator::{
    BoxedKernel, ComputeContext, KernelContext, Operator, OperatorDomain, OperatorInput,
    OperatorOutput,
};
use ort::value::TensorElementType;

use io::{Dims, Tensor};

use super::provider::Provider;

/// Domain name of the operators in the graphs.
pub const DOMAIN: &str = "com.helios";

/// The operators of the domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    ModulatedLayerNorm,
    BiasRmsNormRope,
    GatedResidual,
    TailResidual,
    BiasGeluTanh,
    ChannelRmsNorm,
}

const OPS: [OpKind; 6] = [
    OpKind::ModulatedLayerNorm,
    OpKind::BiasRmsNormRope,
    OpKind::GatedResidual,
    OpKind::TailResidual,
    OpKind::BiasGeluTanh,
    OpKind::ChannelRmsNorm,
];

impl OpKind {
    fn name(self) -> &'static str {
        match self {
            OpKind::ModulatedLayerNorm => "ModulatedLayerNorm",
            OpKind::BiasRmsNormRope => "BiasRmsNormRope",
            OpKind::GatedResidual => "GatedResidual",
            OpKind::TailResidual => "TailResidual",
            OpKind::BiasGeluTanh => "BiasGeluTanh",
            OpKind::ChannelRmsNorm => "ChannelRmsNorm",
        }
    }

    /// Number of inputs (required and optional).
    fn input_count(self) -> usize {
        match self {
            OpKind::ModulatedLayerNorm | OpKind::BiasRmsNormRope | OpKind::GatedResidual => 4,
            OpKind::TailResidual | OpKind::ChannelRmsNorm => 3,
            OpKind::BiasGeluTanh => 2,
        }
    }

    /// Input types in order (`t` = the node's storage type).
    fn inputs(self, t: TensorElementType) -> Vec<OperatorInput> {
        use OperatorInput as I;
        let f32_ = TensorElementType::Float32;
        match self {
            OpKind::ModulatedLayerNorm => vec![
                I::required(t),
                I::optional(f32_),
                I::optional(f32_),
                I::optional(f32_),
            ],
            OpKind::BiasRmsNormRope => vec![
                I::required(t),
                I::optional(t),
                I::optional(t),
                I::optional(f32_),
            ],
            OpKind::GatedResidual => vec![
                I::required(t),
                I::required(t),
                I::optional(t),
                I::required(f32_),
            ],
            OpKind::TailResidual => vec![I::required(t), I::required(t), I::optional(t)],
            OpKind::BiasGeluTanh => vec![I::required(t), I::optional(t)],
            OpKind::ChannelRmsNorm => vec![I::required(t), I::required(t), I::optional(t)],
        }
    }

    /// CUDA entry point for a storage type and access width (`wide`: 8 values a thread, 4 for
    /// `ChannelRmsNorm`).
    fn entry(self, bf: bool, wide: bool) -> &'static str {
        macro_rules! pick {
            ($base:literal) => {
                pick!($base, "_v8")
            };
            ($base:literal, $wide:literal) => {
                match (bf, wide) {
                    (false, false) => concat!($base, "_f32_v1"),
                    (false, true) => concat!($base, "_f32", $wide),
                    (true, false) => concat!($base, "_bf16_v1"),
                    (true, true) => concat!($base, "_bf16", $wide),
                }
            };
        }
        match self {
            OpKind::ModulatedLayerNorm => pick!("modulated_layer_norm"),
            OpKind::BiasRmsNormRope => pick!("bias_rms_norm_rope"),
            OpKind::GatedResidual => pick!("gated_residual"),
            OpKind::TailResidual => pick!("tail_residual"),
            OpKind::BiasGeluTanh => pick!("bias_gelu_tanh"),
            OpKind::ChannelRmsNorm => pick!("channel_rms_norm", "_v4"),
        }
    }

    /// Values one thread accesses at once in the wide variant.
    fn width(self) -> usize {
        match self {
            OpKind::ChannelRmsNorm => 4,
            _ => 8,
        }
    }
}

/// Where the kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Cpu,
    Cuda { device: i32 },
}

/// The attributes of a node (each operator reads the ones the spec gives it).
#[derive(Clone, Copy, Debug)]
struct Attrs {
    eps: f32,
    scale_value: f32,
    silu: bool,
    row_begin: i64,
    split: i64,
    shift: i64,
    scale: i64,
    gate: i64,
    head_dim: i64,
}

impl Attrs {
    fn read(kind: OpKind, info: &KernelContext<'_>) -> Self {
        let default_eps = if kind == OpKind::ChannelRmsNorm {
            1e-12
        } else {
            1e-6
        };
        // `scale` is a float for ChannelRmsNorm and a row index for ModulatedLayerNorm.
        let (scale, scale_value) = if kind == OpKind::ChannelRmsNorm {
            (-1, info.get::<f32>("scale").unwrap_or(1.0))
        } else {
            (info.get::<i64>("scale").unwrap_or(-1), 1.0)
        };
        Self {
            eps: info.get::<f32>("epsilon").unwrap_or(default_eps),
            scale_value,
            silu: info.get::<i64>("silu").unwrap_or(0) != 0,
            row_begin: info.get::<i64>("row_begin").unwrap_or(0),
            split: info.get::<i64>("split").unwrap_or(0),
            shift: info.get::<i64>("shift").unwrap_or(-1),
            scale,
            gate: info.get::<i64>("gate").unwrap_or(-1),
            head_dim: info.get::<i64>("head_dim").unwrap_or(0),
        }
    }
}

/// One operator of the domain for one storage type and place.
struct FusedOp {
    kind: OpKind,
    elem: TensorElementType,
    place: Place,
}

impl Operator for FusedOp {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        self.kind.name()
    }

    fn execution_provider_type(&self) -> Option<&str> {
        match self.place {
            Place::Cpu => None,
            Place::Cuda { .. } => Some("CUDAExecutionProvider"),
        }
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        self.kind.inputs(self.elem)
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(self.elem)]
    }

    fn create_kernel<'attr>(
        &self,
        info: &KernelContext<'attr>,
    ) -> ort::Result<Self::Kernel<'attr>> {
        let (kind, place, bf) = (
            self.kind,
            self.place,
            self.elem == TensorElementType::Bfloat16,
        );
        let attrs = Attrs::read(self.kind, info);
        Ok(Box::new(move |ctx: &ComputeContext| {
            compute(kind, place, bf, &attrs, ctx)
                .map_err(|e| ort::Error::new(format!("{DOMAIN}::{}: {e}", kind.name())))
        }))
    }
}

/// The domain with every operator for `provider`'s device, ready for `SessionBuilder::with_operators`.
pub(crate) fn domain(provider: &Provider) -> ort::Result<OperatorDomain> {
    let place = if provider.is_gpu() {
        Place::Cuda {
            device: provider.device_id(),
        }
    } else {
        Place::Cpu
    };
    let mut domain = OperatorDomain::new(DOMAIN)?;
    for kind in OPS {
        for elem in [TensorElementType::Float32, TensorElementType::Bfloat16] {
            domain = domain.add(FusedOp { kind, elem, place })?;
        }
    }
    Ok(domain)
}

/// Free and total bytes of GPU memory on CUDA device `device` (every process's use counts), from the CUDA
/// driver; an error when there is no driver or device. For diagnostics: how much of the card a model takes.
pub fn gpu_memory(device: i32) -> Result<(usize, usize), String> {
    cuda::memory_info(device)
}

/// The most inputs an operator of the domain takes.
const MAX_INPUTS: usize = 4;

/// A node's inputs, absent ones `None`.
type Inputs<'a> = [Option<Tensor<'a>>; MAX_INPUTS];

/// The validated geometry of one node's call.
struct Plan {
    /// Width of a row (last dimension of the main input).
    d: usize,
    /// `ChannelRmsNorm`: channels and positions per batch item (the dimensions after the channels).
    channels: usize,
    positions: usize,
    /// Rows of the main input.
    rows: usize,
    /// Output shape.
    out_shape: Dims,
    /// Groups and rows per group of the modulation table (0, 0 without one).
    groups: usize,
    per_group: usize,
}

fn want(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(msg()) }
}

fn index(value: i64, limit: usize, what: &str) -> Result<usize, String> {
    usize::try_from(value)
        .ok()
        .filter(|v| *v < limit)
        .ok_or_else(|| format!("attribute `{what}` = {value} is out of range 0..{limit}"))
}

/// Checks shapes and attributes against the spec; returns the geometry.
fn plan(kind: OpKind, a: &Attrs, ins: &Inputs<'_>) -> Result<Plan, String> {
    let x = ins[0].as_ref().ok_or("input 0 is required")?;
    want(!x.shape.is_empty(), || {
        "input 0 must have at least one dimension".into()
    })?;
    let d = *x.shape.last().unwrap_or(&0);
    want(d > 0, || "input 0 has an empty last dimension".into())?;
    let rows = x.len() / d;
    let vector = |i: usize, what: &str| -> Result<(), String> {
        match &ins[i] {
            Some(v) => want(v.len() == d, || {
                format!("{what} has {} values, expected {d}", v.len())
            }),
            None => Ok(()),
        }
    };
    let mods = |i: usize| -> Result<(usize, usize), String> {
        match &ins[i] {
            Some(m) => {
                want(m.shape.len() == 3 && m.shape[2] == d, || {
                    format!(
                        "the modulation table is {:?}, expected [G, K, {d}]",
                        m.shape
                    )
                })?;
                want(m.shape[0] == 1 || m.shape[0] == 2, || {
                    format!("the modulation table has {} groups (1 or 2)", m.shape[0])
                })?;
                Ok((m.shape[0], m.shape[1]))
            }
            None => Ok((0, 0)),
        }
    };
    let mut out_shape = x.shape;
    let (mut groups, mut per_group) = (0, 0);
    match kind {
        OpKind::ModulatedLayerNorm => {
            (groups, per_group) = mods(1)?;
            vector(2, "Weight")?;
            vector(3, "Bias")?;
            for (value, name) in [(a.shift, "shift"), (a.scale, "scale")] {
                if value >= 0 {
                    want(groups > 0, || format!("`{name}` needs the Mods input"))?;
                    index(value, per_group, name)?;
                }
            }
            let begin = usize::try_from(a.row_begin)
                .ok()
                .filter(|b| *b <= rows)
                .ok_or_else(|| format!("row_begin {} is outside 0..={rows}", a.row_begin))?;
            if begin > 0 {
                want(
                    x.shape.len() == 2 || (x.shape.len() == 3 && x.shape[0] == 1),
                    || {
                        format!(
                            "row_begin needs a [1, R, D] or [R, D] input, got {:?}",
                            x.shape
                        )
                    },
                )?;
                let n = out_shape.len();
                out_shape[n - 2] = rows - begin;
            }
        }
        OpKind::BiasRmsNormRope => {
            vector(1, "Bias")?;
            vector(2, "Weight")?;
            if let Some(r) = &ins[3] {
                let hd = usize::try_from(a.head_dim).unwrap_or(0);
                want(
                    hd > 0 && hd.is_multiple_of(2) && d.is_multiple_of(hd),
                    || format!("head_dim {} must be even and divide {d}", a.head_dim),
                )?;
                want(r.len() == rows * 2 * hd, || {
                    format!("Rope is {:?}, expected [{rows}, {}]", r.shape, 2 * hd)
                })?;
            }
        }
        OpKind::GatedResidual => {
            let attn = ins[1].as_ref().ok_or("input 1 (A) is required")?;
            want(attn.shape == x.shape, || {
                format!("A is {:?}, X is {:?}", attn.shape, x.shape)
            })?;
            vector(2, "Bias")?;
            (groups, per_group) = mods(3)?;
            want(groups > 0, || "input 3 (Mods) is required".into())?;
            index(a.gate, per_group, "gate")?;
        }
        OpKind::TailResidual => {
            let tail = ins[1].as_ref().ok_or("input 1 (A) is required")?;
            want(
                tail.shape.last() == Some(&d) && tail.len() <= x.len(),
                || format!("A is {:?}, X is {:?}", tail.shape, x.shape),
            )?;
            vector(2, "Bias")?;
        }
        OpKind::BiasGeluTanh => vector(1, "Bias")?,
        OpKind::ChannelRmsNorm => {
            want(x.shape.len() >= 2, || {
                format!("X is {:?}, expected [B, C, ...]", x.shape)
            })?;
            let channels = x.shape[1];
            for (i, what) in [(1, "Gamma"), (2, "Bias")] {
                if let Some(v) = &ins[i] {
                    want(v.len() == channels, || {
                        format!("{what} has {} values for {channels} channels", v.len())
                    })?;
                }
            }
            want(ins[1].is_some(), || "input 1 (Gamma) is required".into())?;
        }
    }
    want(a.split >= 0, || format!("split {} is negative", a.split))?;
    let channels = if x.shape.len() >= 2 { x.shape[1] } else { 1 };
    let positions = x.shape.iter().skip(2).product();
    Ok(Plan {
        d,
        channels,
        positions,
        rows,
        out_shape,
        groups,
        per_group,
    })
}

fn compute(
    kind: OpKind,
    place: Place,
    bf: bool,
    a: &Attrs,
    ctx: &ComputeContext,
) -> Result<(), String> {
    let given = io::input_count(ctx)?.min(kind.input_count());
    let mut ins: Inputs<'_> = Default::default();
    for (i, slot) in ins.iter_mut().enumerate().take(given) {
        *slot = io::input(ctx, i).map_err(|e| format!("input {i}: {e}"))?;
    }
    let p = plan(kind, a, &ins)?;
    match place {
        Place::Cpu if bf => run_cpu::<bf16>(kind, a, &p, &ins, ctx),
        Place::Cpu => run_cpu::<f32>(kind, a, &p, &ins, ctx),
        Place::Cuda { device } => run_cuda(kind, device, bf, a, &p, &ins, ctx),
    }
}

fn host<'a, T: ort::value::PrimitiveTensorElementType>(
    ins: &Inputs<'a>,
    i: usize,
) -> Result<Option<&'a [T]>, String> {
    ins[i]
        .as_ref()
        .map(|v| v.host::<T>().map_err(|e| format!("input {i}: {e}")))
        .transpose()
}

fn run_cpu<T: cpu::Elem + ort::value::PrimitiveTensorElementType>(
    kind: OpKind,
    a: &Attrs,
    p: &Plan,
    ins: &Inputs<'_>,
    ctx: &ComputeContext,
) -> Result<(), String> {
    let x = host::<T>(ins, 0)?.ok_or("input 0 is required")?;
    let y = io::output(ctx, 0, &p.out_shape)?
        .host_mut::<T>()
        .map_err(|e| format!("output: {e}"))?;
    let mods = |i: usize| -> Result<Option<cpu::Mods<'_>>, String> {
        Ok(host::<f32>(ins, i)?.map(|data| cpu::Mods {
            data,
            groups: p.groups,
            per_group: p.per_group,
            split: a.split as usize,
        }))
    };
    let opt_index = |v: i64| usize::try_from(v).ok();
    match kind {
        OpKind::ModulatedLayerNorm => cpu::modulated_layer_norm(
            x,
            p.d,
            a.row_begin as usize,
            mods(1)?,
            host::<f32>(ins, 2)?,
            host::<f32>(ins, 3)?,
            opt_index(a.shift),
            opt_index(a.scale),
            a.eps,
            y,
        ),
        OpKind::BiasRmsNormRope => cpu::bias_rms_norm_rope(
            x,
            p.d,
            host::<T>(ins, 1)?,
            host::<T>(ins, 2)?,
            host::<f32>(ins, 3)?.map(|t| (t, a.head_dim as usize)),
            a.eps,
            y,
        ),
        OpKind::GatedResidual => cpu::gated_residual(
            x,
            host::<T>(ins, 1)?.ok_or("input 1 is required")?,
            p.d,
            host::<T>(ins, 2)?,
            mods(3)?.ok_or("input 3 is required")?,
            a.gate as usize,
            y,
        ),
        OpKind::TailResidual => cpu::tail_residual(
            x,
            host::<T>(ins, 1)?.ok_or("input 1 is required")?,
            p.d,
            host::<T>(ins, 2)?,
            y,
        ),
        OpKind::BiasGeluTanh => cpu::bias_gelu_tanh(x, p.d, host::<T>(ins, 1)?, y),
        OpKind::ChannelRmsNorm => cpu::channel_rms_norm(
            x,
            p.channels,
            p.positions,
            host::<T>(ins, 1)?.ok_or("input 1 is required")?,
            host::<T>(ins, 2)?,
            a.scale_value,
            a.eps,
            a.silu,
            y,
        ),
    }
    Ok(())
}

/// `HELIOS_FUSED_SCALAR=1` forces the scalar kernels (to check them against the vector ones).
fn scalar_only() -> bool {
    static SCALAR: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SCALAR.get_or_init(|| std::env::var_os("HELIOS_FUSED_SCALAR").is_some_and(|v| v == "1"))
}

/// Threads per block of the row kernels: enough for one pass over a row, at most 256.
fn row_block(d: usize, width: usize) -> u32 {
    let per_row = d.div_ceil(width).div_ceil(32) * 32;
    per_row.clamp(32, 256) as u32
}

fn run_cuda(
    kind: OpKind,
    device: i32,
    bf: bool,
    a: &Attrs,
    p: &Plan,
    ins: &Inputs<'_>,
    ctx: &ComputeContext,
) -> Result<(), String> {
    use cuda::Arg;
    let ptr = |i: usize| ins[i].as_ref().map_or(0, Tensor::addr);
    // The output's device address.
    let y = io::output(ctx, 0, &p.out_shape)?.addr();
    let out_len = p.out_shape.numel();
    if out_len == 0 {
        return Ok(());
    }
    let stream = ctx
        .stream()
        .map_err(|e| e.to_string())?
        .ok_or("the CUDA provider gave no compute stream")?
        .as_ptr();
    // Wide access needs whole vectors per row (per batch item for ChannelRmsNorm) and aligned addresses.
    let wide_width = kind.width();
    let run = if kind == OpKind::ChannelRmsNorm {
        p.positions
    } else {
        p.d
    };
    let mut addresses = (0..ins.len()).map(ptr).chain([y]);
    let wide =
        !scalar_only() && run.is_multiple_of(wide_width) && addresses.all(|addr| addr % 16 == 0);
    let width = if wide { wide_width } else { 1 };
    let name = kind.entry(bf, wide);
    let int = |v: usize| -> Result<i32, String> {
        i32::try_from(v).map_err(|_| format!("{v} does not fit the kernel's int argument"))
    };
    let d = int(p.d)?;
    let elementwise = |n: usize| -> (u32, u32) {
        let blocks = n.div_ceil(width).div_ceil(256).clamp(1, 1 << 20);
        (blocks as u32, 256)
    };
    let (grid, block, args) = match kind {
        OpKind::ModulatedLayerNorm => (
            int(p.rows - a.row_begin as usize)? as u32,
            row_block(p.d, width),
            cuda::ArgList::new(&[
                Arg::Ptr(ptr(0)),
                Arg::Ptr(y),
                Arg::Ptr(ptr(1)),
                Arg::Ptr(ptr(2)),
                Arg::Ptr(ptr(3)),
                Arg::I32(d),
                Arg::I32(int(a.row_begin as usize)?),
                Arg::I32(int(a.split as usize).unwrap_or(i32::MAX)),
                Arg::I32(int(p.groups)?),
                Arg::I32(int(p.per_group)?),
                Arg::I32(a.shift.max(-1) as i32),
                Arg::I32(a.scale.max(-1) as i32),
                Arg::F32(a.eps),
            ]),
        ),
        OpKind::BiasRmsNormRope => (
            int(p.rows)? as u32,
            row_block(p.d, width),
            cuda::ArgList::new(&[
                Arg::Ptr(ptr(0)),
                Arg::Ptr(ptr(1)),
                Arg::Ptr(ptr(2)),
                Arg::Ptr(ptr(3)),
                Arg::Ptr(y),
                Arg::I32(d),
                Arg::I32(int(a.head_dim.max(0) as usize)?),
                Arg::F32(a.eps),
            ]),
        ),
        OpKind::GatedResidual => {
            let (g, b) = elementwise(out_len);
            (
                g,
                b,
                cuda::ArgList::new(&[
                    Arg::Ptr(ptr(0)),
                    Arg::Ptr(ptr(1)),
                    Arg::Ptr(ptr(2)),
                    Arg::Ptr(ptr(3)),
                    Arg::Ptr(y),
                    Arg::I64(out_len as i64),
                    Arg::I32(d),
                    Arg::I32(int(a.split as usize).unwrap_or(i32::MAX)),
                    Arg::I32(int(p.groups)?),
                    Arg::I32(int(p.per_group)?),
                    Arg::I32(a.gate as i32),
                ]),
            )
        }
        OpKind::TailResidual => {
            let (g, b) = elementwise(out_len);
            let tail = ins[1].as_ref().map_or(0, Tensor::len);
            (
                g,
                b,
                cuda::ArgList::new(&[
                    Arg::Ptr(ptr(0)),
                    Arg::Ptr(ptr(1)),
                    Arg::Ptr(ptr(2)),
                    Arg::Ptr(y),
                    Arg::I64(out_len as i64),
                    Arg::I32(d),
                    Arg::I64((out_len - tail) as i64),
                ]),
            )
        }
        OpKind::BiasGeluTanh => {
            let (g, b) = elementwise(out_len);
            (
                g,
                b,
                cuda::ArgList::new(&[
                    Arg::Ptr(ptr(0)),
                    Arg::Ptr(ptr(1)),
                    Arg::Ptr(y),
                    Arg::I64(out_len as i64),
                    Arg::I32(d),
                ]),
            )
        }
        OpKind::ChannelRmsNorm => {
            // One thread per `width` positions: the grid covers batch x positions exactly.
            let positions = out_len / p.channels.max(1);
            let threads = positions.div_ceil(width);
            let grid = u32::try_from(threads.div_ceil(256))
                .map_err(|_| format!("{positions} positions are too many for one launch"))?;
            (
                grid,
                256,
                cuda::ArgList::new(&[
                    Arg::Ptr(ptr(0)),
                    Arg::Ptr(ptr(1)),
                    Arg::Ptr(ptr(2)),
                    Arg::Ptr(y),
                    Arg::I64(positions as i64),
                    Arg::I32(int(p.channels)?),
                    Arg::I64(p.positions as i64),
                    Arg::F32(a.scale_value),
                    Arg::F32(a.eps),
                    Arg::I32(i32::from(a.silu)),
                ]),
            )
        }
    };
    cuda::launch(name, device, grid, block, stream, &args?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptx_is_built_from_the_current_source() {
        use sha2::{Digest, Sha256};
        let source = include_bytes!("helios_ops.cu");
        let sum: String = Sha256::digest(source)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let first = cuda::PTX.lines().next().unwrap_or_default();
        assert!(
            first.contains(&sum),
            "helios_ops.ptx was built from another helios_ops.cu (run tools/kernels/build_ptx.sh): {first}"
        );
    }

    #[test]
    fn input_counts_match_the_schemas() {
        for kind in OPS {
            assert_eq!(
                kind.input_count(),
                kind.inputs(TensorElementType::Float32).len(),
                "{kind:?}"
            );
            assert!(kind.input_count() <= MAX_INPUTS);
        }
    }

    #[test]
    fn row_blocks_cover_a_row_in_one_pass_up_to_256_threads() {
        assert_eq!(row_block(24, 8), 32);
        assert_eq!(row_block(5120, 8), 256);
        assert_eq!(row_block(256, 8), 32);
        assert_eq!(row_block(1000, 1), 256);
    }
}
