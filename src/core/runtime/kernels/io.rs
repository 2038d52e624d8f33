//! A node's inputs and outputs read straight from ONNX Runtime's C API, with no host allocation.
//!
//! The ort crate's safe accessors build a `Value` for every input of every call (reference counts, shape
//! and symbol vectors): about a dozen heap allocations a node, 48 thousand in a steady 14B chunk (measured on
//! the H100, `tools/bench/results/cuda_graph_h100_L40/base.txt`). Here a shape is a fixed array on the stack
//! and a tensor is its shape, element type and data address, borrowed for the duration of the call.
#![expect(
    unsafe_code,
    reason = "ONNX Runtime's C API: a kernel's input and output tensors, without the allocating wrappers"
)]

use std::ffi::{CStr, c_void};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use ort::AsPointer;
use ort::operator::ComputeContext;
use ort::value::{IntoTensorElementType, TensorElementType};

/// The most dimensions a tensor of the domain may have (the VAE's activations have 5).
pub(super) const MAX_RANK: usize = 8;

/// A tensor shape on the stack.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Dims {
    rank: usize,
    /// The dimensions; entries past `rank` stay 0 so that `==` compares shapes.
    dims: [usize; MAX_RANK],
}

impl Dims {
    /// The shape `dims`; an error past [`MAX_RANK`] dimensions.
    #[cfg(test)]
    pub(super) fn new(dims: &[usize]) -> Result<Self, String> {
        if dims.len() > MAX_RANK {
            return Err(format!(
                "{} dimensions, the operators take at most {MAX_RANK}",
                dims.len()
            ));
        }
        let mut out = Self {
            rank: dims.len(),
            ..Self::default()
        };
        out.dims[..dims.len()].copy_from_slice(dims);
        Ok(out)
    }

    /// Number of elements.
    pub(super) fn numel(&self) -> usize {
        self.iter().product()
    }
}

impl Deref for Dims {
    type Target = [usize];
    fn deref(&self) -> &[usize] {
        &self.dims[..self.rank]
    }
}

impl DerefMut for Dims {
    fn deref_mut(&mut self) -> &mut [usize] {
        &mut self.dims[..self.rank]
    }
}

impl std::fmt::Debug for Dims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// One tensor of a node's call: valid while the call's context is borrowed.
pub(super) struct Tensor<'a> {
    pub(super) shape: Dims,
    pub(super) elem: TensorElementType,
    data: *mut c_void,
    _call: PhantomData<&'a ComputeContext>,
}

impl<'a> Tensor<'a> {
    /// Number of elements.
    pub(super) fn len(&self) -> usize {
        self.shape.numel()
    }

    /// The data's address (a device address on the GPU providers).
    pub(super) fn addr(&self) -> usize {
        self.data as usize
    }

    fn check_elem<T: IntoTensorElementType>(&self) -> Result<(), String> {
        let want = T::into_tensor_element_type();
        if self.elem == want {
            Ok(())
        } else {
            Err(format!("holds {:?}, the kernel reads {want:?}", self.elem))
        }
    }

    /// The data as host values (CPU provider only: the memory must be host memory).
    pub(super) fn host<T: IntoTensorElementType>(&self) -> Result<&'a [T], String> {
        self.check_elem::<T>()?;
        if self.len() == 0 {
            return Ok(&[]);
        }
        // SAFETY: ONNX Runtime's tensor of `len` elements of type T (checked above) in host memory (the CPU
        // provider's kernels get CPU tensors), alive and unchanged for the call the borrow is tied to.
        Ok(unsafe { std::slice::from_raw_parts(self.data.cast::<T>(), self.len()) })
    }

    /// The data as host values to write (CPU provider only; for the node's output).
    pub(super) fn host_mut<T: IntoTensorElementType>(&mut self) -> Result<&'a mut [T], String> {
        self.check_elem::<T>()?;
        if self.len() == 0 {
            return Ok(&mut []);
        }
        // SAFETY: as `host`; an output tensor is written only by this kernel, and this is its only view.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.data.cast::<T>(), self.len()) })
    }
}

/// Turns a status ONNX Runtime returned into a result, releasing it.
pub(super) fn check(status: ort::sys::OrtStatusPtr, what: &str) -> Result<(), String> {
    if status.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a status ONNX Runtime returned: read its message, then release it once.
    let message = unsafe { CStr::from_ptr((api.GetErrorMessage)(status.0)) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: as above.
    unsafe { (api.ReleaseStatus)(status.0) };
    Err(format!("{what}: {message}"))
}

/// Shape, type and data of an ONNX Runtime tensor.
///
/// # Safety
/// `value` is a tensor ONNX Runtime handed to the current kernel call.
unsafe fn describe<'a>(value: *mut ort::sys::OrtValue, what: &str) -> Result<Tensor<'a>, String> {
    let api = ort::api();
    let mut elem = ort::sys::ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    let mut dims: *const i64 = std::ptr::null();
    let mut rank = 0usize;
    // SAFETY: out-parameters; the shape array belongs to the value and lives as long as it.
    check(
        unsafe {
            (api.GetTensorElementTypeAndShapeDataReference)(value, &mut elem, &mut dims, &mut rank)
        },
        what,
    )?;
    if rank > MAX_RANK {
        return Err(format!(
            "{what} has {rank} dimensions, the operators take at most {MAX_RANK}"
        ));
    }
    let mut shape = Dims {
        rank,
        ..Dims::default()
    };
    for (i, slot) in shape.dims[..rank].iter_mut().enumerate() {
        // SAFETY: `dims` points at `rank` values (ONNX Runtime's shape of this tensor).
        let d = unsafe { *dims.add(i) };
        *slot = usize::try_from(d).map_err(|_| format!("{what} has dimension {d}"))?;
    }
    let mut data: *mut c_void = std::ptr::null_mut();
    // SAFETY: an out-parameter; a tensor's data address (null for an empty tensor).
    check(
        unsafe { (api.GetTensorMutableData)(value, &mut data) },
        what,
    )?;
    Ok(Tensor {
        shape,
        elem: elem.into(),
        data,
        _call: PhantomData,
    })
}

/// Number of inputs the node was given.
pub(super) fn input_count(ctx: &ComputeContext) -> Result<usize, String> {
    let mut count = 0usize;
    // SAFETY: the call's context (valid for the borrow) and an out-parameter.
    check(
        unsafe { (ort::api().KernelContext_GetInputCount)(ctx.ptr(), &mut count) },
        "input count",
    )?;
    Ok(count)
}

/// Input `idx` (below [`input_count`]) of the call; `None` when the node leaves this optional one out.
pub(super) fn input(ctx: &ComputeContext, idx: usize) -> Result<Option<Tensor<'_>>, String> {
    let mut value: *const ort::sys::OrtValue = std::ptr::null();
    // SAFETY: the call's context (valid for the borrow) and an out-parameter; ONNX Runtime checks `idx`.
    check(
        unsafe { (ort::api().KernelContext_GetInput)(ctx.ptr(), idx, &mut value) },
        "input",
    )?;
    if value.is_null() {
        return Ok(None);
    }
    // SAFETY: a tensor input of this call (the operator's schema declares only tensors). ONNX Runtime's data
    // accessor takes a mutable value; the kernels only read inputs.
    unsafe { describe(value.cast_mut(), "an input") }.map(Some)
}

/// Output `idx` of the call, allocated by ONNX Runtime with `shape`.
pub(super) fn output<'a>(
    ctx: &'a ComputeContext,
    idx: usize,
    shape: &Dims,
) -> Result<Tensor<'a>, String> {
    let api = ort::api();
    let mut dims = [0i64; MAX_RANK];
    for (slot, &d) in dims.iter_mut().zip(shape.iter()) {
        *slot = i64::try_from(d).map_err(|_| format!("output dimension {d} is too large"))?;
    }
    let mut value: *mut ort::sys::OrtValue = std::ptr::null_mut();
    // SAFETY: the call's context; `dims` holds `rank` dimensions; an out-parameter.
    check(
        unsafe {
            (api.KernelContext_GetOutput)(
                ctx.ptr().cast_mut(),
                idx,
                dims.as_ptr(),
                shape.len(),
                &mut value,
            )
        },
        "output",
    )?;
    if value.is_null() {
        return Err(format!("ONNX Runtime gave no output {idx}"));
    }
    // SAFETY: the output tensor ONNX Runtime just allocated for this call.
    unsafe { describe(value, "the output") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dims_compare_and_count_only_their_rank() {
        let a = Dims::new(&[2, 3, 4]).unwrap();
        let mut b = Dims::new(&[2, 3, 5]).unwrap();
        assert_ne!(a, b);
        b[2] = 4;
        assert_eq!(a, b);
        assert_eq!(a.numel(), 24);
        assert_eq!(a.len(), 3);
        assert_eq!(format!("{a:?}"), "[2, 3, 4]");
        assert_eq!(Dims::new(&[]).unwrap().numel(), 1);
        assert!(Dims::new(&[1; MAX_RANK + 1]).is_err());
    }
}
