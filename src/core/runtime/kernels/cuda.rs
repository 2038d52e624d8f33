//! The `com.helios` kernels on the GPU: `helios_ops.ptx` loaded through the CUDA driver API and launched
//! on ONNX Runtime's compute stream.
//!
//! The driver library (`libcuda.so.1`, part of the NVIDIA driver, present wherever the CUDA provider runs)
//! is opened at first use. The PTX is JIT-compiled once per CUDA context by the driver (it caches the
//! result on disk); the module and its functions are kept for the life of the process.
#![expect(
    unsafe_code,
    reason = "FFI to the CUDA driver API: loading the PTX module and launching kernels on ONNX Runtime's stream"
)]

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::sync::{Mutex, OnceLock};

/// The PTX of `helios_ops.cu` (built by `tools/kernels/build_ptx.sh`).
pub(crate) const PTX: &str = include_str!("helios_ops.ptx");

type CuResult = c_int;
type CuDevice = c_int;
type CuContext = *mut c_void;
type CuModule = *mut c_void;
type CuFunction = *mut c_void;
type CuStream = *mut c_void;

/// The few driver entry points the kernels need.
struct Driver {
    _lib: libloading::Library,
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    device_get: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    primary_ctx_retain: unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult,
    ctx_get_current: unsafe extern "C" fn(*mut CuContext) -> CuResult,
    ctx_set_current: unsafe extern "C" fn(CuContext) -> CuResult,
    module_load_data: unsafe extern "C" fn(*mut CuModule, *const c_void) -> CuResult,
    module_get_function: unsafe extern "C" fn(*mut CuFunction, CuModule, *const c_char) -> CuResult,
    launch_kernel: unsafe extern "C" fn(
        CuFunction,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        CuStream,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> CuResult,
    get_error_string: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
    mem_get_info: unsafe extern "C" fn(*mut usize, *mut usize) -> CuResult,
    mem_alloc: unsafe extern "C" fn(*mut u64, usize) -> CuResult,
    mem_free: unsafe extern "C" fn(u64) -> CuResult,
    memcpy_htod: unsafe extern "C" fn(u64, *const c_void, usize) -> CuResult,
}

impl Driver {
    fn open() -> Result<Self, String> {
        // SAFETY: loading the system's CUDA driver library, whose initialisers have no preconditions.
        let lib = unsafe { libloading::Library::new("libcuda.so.1") }.map_err(|e| {
            format!("the CUDA driver library (libcuda.so.1) could not be opened: {e}")
        })?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol's type is the driver API's documented signature (cuda.h, CUDA 12/13).
                *unsafe { lib.get($name) }.map_err(|e| {
                    format!(
                        "libcuda.so.1 lacks {}: {e}",
                        String::from_utf8_lossy(&$name[..$name.len() - 1])
                    )
                })?
            };
        }
        Ok(Self {
            init: sym!(b"cuInit\0"),
            device_get: sym!(b"cuDeviceGet\0"),
            primary_ctx_retain: sym!(b"cuDevicePrimaryCtxRetain\0"),
            ctx_get_current: sym!(b"cuCtxGetCurrent\0"),
            ctx_set_current: sym!(b"cuCtxSetCurrent\0"),
            module_load_data: sym!(b"cuModuleLoadData\0"),
            module_get_function: sym!(b"cuModuleGetFunction\0"),
            launch_kernel: sym!(b"cuLaunchKernel\0"),
            get_error_string: sym!(b"cuGetErrorString\0"),
            mem_get_info: sym!(b"cuMemGetInfo_v2\0"),
            mem_alloc: sym!(b"cuMemAlloc_v2\0"),
            mem_free: sym!(b"cuMemFree_v2\0"),
            memcpy_htod: sym!(b"cuMemcpyHtoD_v2\0"),
            _lib: lib,
        })
    }

    fn check(&self, what: impl std::fmt::Display, code: CuResult) -> Result<(), String> {
        if code == 0 {
            return Ok(());
        }
        let mut msg: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorString writes a pointer to a static string (or leaves it null).
        let known = unsafe { (self.get_error_string)(code, &mut msg) } == 0 && !msg.is_null();
        let text = if known {
            // SAFETY: a NUL-terminated static string owned by the driver.
            unsafe { CStr::from_ptr(msg) }
                .to_string_lossy()
                .into_owned()
        } else {
            "unknown error".into()
        };
        Err(format!("{what} failed: CUDA error {code} ({text})"))
    }

    /// The current context of this thread; the device's primary context (the one the CUDA runtime, and so
    /// ONNX Runtime, uses) made current when there is none.
    fn current_context(&self, device: i32) -> Result<CuContext, String> {
        let mut ctx: CuContext = std::ptr::null_mut();
        // SAFETY: plain out-parameter calls of the driver API.
        unsafe {
            self.check("cuInit", (self.init)(0))?;
            self.check("cuCtxGetCurrent", (self.ctx_get_current)(&mut ctx))?;
            if ctx.is_null() {
                let mut dev: CuDevice = 0;
                self.check("cuDeviceGet", (self.device_get)(&mut dev, device))?;
                self.check(
                    "cuDevicePrimaryCtxRetain",
                    (self.primary_ctx_retain)(&mut ctx, dev),
                )?;
                self.check("cuCtxSetCurrent", (self.ctx_set_current)(ctx))?;
            }
        }
        Ok(ctx)
    }
}

fn driver() -> Result<&'static Driver, String> {
    static DRIVER: OnceLock<Result<Driver, String>> = OnceLock::new();
    DRIVER
        .get_or_init(Driver::open)
        .as_ref()
        .map_err(Clone::clone)
}

/// Loaded functions by (context, kernel name); addresses stored as integers (the handles are process-wide).
fn functions() -> &'static Mutex<HashMap<(usize, &'static str), usize>> {
    static FUNCTIONS: OnceLock<Mutex<HashMap<(usize, &'static str), usize>>> = OnceLock::new();
    FUNCTIONS.get_or_init(Default::default)
}

/// Loaded modules by context.
fn modules() -> &'static Mutex<HashMap<usize, usize>> {
    static MODULES: OnceLock<Mutex<HashMap<usize, usize>>> = OnceLock::new();
    MODULES.get_or_init(Default::default)
}

fn function(drv: &Driver, ctx: CuContext, name: &'static str) -> Result<CuFunction, String> {
    let key = (ctx as usize, name);
    if let Some(f) = functions().lock().map_err(|e| e.to_string())?.get(&key) {
        return Ok(*f as CuFunction);
    }
    let module = {
        let mut modules = modules().lock().map_err(|e| e.to_string())?;
        match modules.get(&(ctx as usize)) {
            Some(m) => *m as CuModule,
            None => {
                let image = CString::new(PTX).map_err(|e| e.to_string())?;
                let mut module: CuModule = std::ptr::null_mut();
                // SAFETY: `image` is a NUL-terminated PTX text; the driver copies what it needs.
                drv.check(
                    "loading the fused-operator PTX (cuModuleLoadData)",
                    unsafe { (drv.module_load_data)(&mut module, image.as_ptr().cast()) },
                )?;
                modules.insert(ctx as usize, module as usize);
                module
            }
        }
    };
    let cname = CString::new(name).map_err(|e| e.to_string())?;
    let mut f: CuFunction = std::ptr::null_mut();
    // SAFETY: `module` is a loaded module of this context; `cname` is NUL-terminated.
    drv.check(format_args!("cuModuleGetFunction({name})"), unsafe {
        (drv.module_get_function)(&mut f, module, cname.as_ptr())
    })?;
    functions()
        .lock()
        .map_err(|e| e.to_string())?
        .insert(key, f as usize);
    Ok(f)
}

/// `(free, total)` bytes of device memory on `device`, as the driver reports them (all processes).
pub(crate) fn memory_info(device: i32) -> Result<(usize, usize), String> {
    let drv = driver()?;
    drv.current_context(device)?;
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: two out-parameters.
    drv.check("cuMemGetInfo", unsafe {
        (drv.mem_get_info)(&mut free, &mut total)
    })?;
    Ok((free, total))
}

/// Device memory this crate allocated (`cuMemAlloc`), freed on drop. ONNX Runtime takes an initializer
/// shared between sessions only when its memory belongs to the caller, not to one of its allocators.
pub(crate) struct DeviceBuffer {
    ptr: u64,
    bytes: usize,
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl DeviceBuffer {
    /// Copies `host` into new device memory on `device`.
    pub(crate) fn upload(device: i32, host: &[u8]) -> Result<Self, String> {
        let drv = driver()?;
        drv.current_context(device)?;
        let mut ptr = 0u64;
        // SAFETY: an out-parameter; the size is the host slice's.
        drv.check(format_args!("cuMemAlloc({} bytes)", host.len()), unsafe {
            (drv.mem_alloc)(&mut ptr, host.len().max(1))
        })?;
        let buffer = Self {
            ptr,
            bytes: host.len(),
        };
        // SAFETY: `ptr` has `host.len()` bytes of device memory; `host` is readable for that many.
        drv.check("cuMemcpyHtoD", unsafe {
            (drv.memcpy_htod)(ptr, host.as_ptr().cast(), host.len())
        })?;
        Ok(buffer)
    }

    /// An ONNX Runtime tensor of `shape` and `elem` over this memory (which must outlive it: keep the buffer
    /// for as long as any session uses the tensor).
    pub(crate) fn tensor(
        &self,
        device: i32,
        elem: ort::value::TensorElementType,
        shape: &[i64],
    ) -> Result<ort::value::DynValue, String> {
        use ort::AsPointer;
        use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};

        let info = MemoryInfo::new(
            AllocationDevice::CUDA,
            device,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(|e| e.to_string())?;
        let api = ort::api();
        let mut value: *mut ort::sys::OrtValue = std::ptr::null_mut();
        // SAFETY: the buffer holds `self.bytes` bytes on `device`; ONNX Runtime only records the pointer.
        let status = unsafe {
            (api.CreateTensorWithDataAsOrtValue)(
                info.ptr(),
                self.ptr as *mut c_void,
                self.bytes,
                shape.as_ptr(),
                shape.len(),
                elem.into(),
                &mut value,
            )
        };
        super::io::check(status, "creating a tensor over device memory")?;
        let value = std::ptr::NonNull::new(value).ok_or("ONNX Runtime returned no tensor")?;
        // SAFETY: a valid OrtValue we own from here on; it owns no memory, so the allocator ort wants for
        // tensors is never used to free anything.
        Ok(unsafe { ort::value::DynValue::from_ptr(value, Some(&Allocator::default())) })
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if let Ok(drv) = driver() {
            // SAFETY: memory this buffer allocated; nothing refers to it once the buffer goes.
            let _ = unsafe { (drv.mem_free)(self.ptr) };
        }
    }
}

/// The most arguments a kernel of `helios_ops.cu` takes.
pub(crate) const MAX_ARGS: usize = 16;

/// A kernel's arguments, on the stack.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ArgList {
    len: usize,
    args: [Arg; MAX_ARGS],
}

impl ArgList {
    /// The arguments `args`, in the kernel's parameter order; an error past [`MAX_ARGS`].
    pub(crate) fn new(args: &[Arg]) -> Result<Self, String> {
        let mut list = Self {
            len: args.len(),
            args: [Arg::I32(0); MAX_ARGS],
        };
        list.args
            .get_mut(..args.len())
            .ok_or_else(|| format!("{} kernel arguments, at most {MAX_ARGS}", args.len()))?
            .copy_from_slice(args);
        Ok(list)
    }

    fn as_slice(&self) -> &[Arg] {
        &self.args[..self.len]
    }
}

/// One kernel argument, passed by value.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg {
    /// A device address (null for an absent optional input).
    Ptr(usize),
    /// `int`.
    I32(i32),
    /// `long long`.
    I64(i64),
    /// `float`.
    F32(f32),
}

/// Launches kernel `name` of `helios_ops.ptx` with a 1-D grid on `stream` (ONNX Runtime's compute stream).
pub(crate) fn launch(
    name: &'static str,
    device: i32,
    grid: u32,
    block: u32,
    stream: *mut c_void,
    args: &ArgList,
) -> Result<(), String> {
    let drv = driver()?;
    let ctx = drv.current_context(device)?;
    let f = function(drv, ctx, name)?;
    // The driver reads each argument through a pointer to its value; keep the values alive here (on the
    // stack: a launch allocates nothing).
    let mut values = [0u64; MAX_ARGS];
    for (value, arg) in values.iter_mut().zip(args.as_slice()) {
        *value = match *arg {
            Arg::Ptr(p) => p as u64,
            Arg::I32(v) => u64::from(v as u32),
            Arg::I64(v) => v as u64,
            Arg::F32(v) => u64::from(v.to_bits()),
        };
    }
    let mut params = [std::ptr::null_mut::<c_void>(); MAX_ARGS];
    for (param, value) in params.iter_mut().zip(values.iter_mut()) {
        *param = (value as *mut u64).cast::<c_void>();
    }
    // SAFETY: `params` holds one pointer per kernel parameter, in order (the kernel reads only as many as it
    // declares); on this little-endian target the low bytes of each u64 are the int/float/pointer value the
    // kernel's parameter expects. The stream is ONNX Runtime's, valid for the duration of the node's call.
    drv.check(format_args!("launching {name}"), unsafe {
        (drv.launch_kernel)(
            f,
            grid,
            1,
            1,
            block,
            1,
            1,
            0,
            stream,
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptx_defines_every_entry_point() {
        for op in [
            "modulated_layer_norm",
            "bias_rms_norm_rope",
            "gated_residual",
            "tail_residual",
            "bias_gelu_tanh",
        ] {
            for ty in ["f32", "bf16"] {
                for vec in ["v1", "v8"] {
                    let entry = format!(".entry {op}_{ty}_{vec}(");
                    assert!(PTX.contains(&entry), "helios_ops.ptx lacks {entry}");
                }
            }
        }
        for entry in [
            "channel_rms_norm_f32_v1",
            "channel_rms_norm_f32_v4",
            "channel_rms_norm_bf16_v1",
            "channel_rms_norm_bf16_v4",
        ] {
            assert!(
                PTX.contains(&format!(".entry {entry}(")),
                "helios_ops.ptx lacks {entry}"
            );
        }
    }
}
