// CUDA kernels of the `com.helios` operators (docs/fused-ops.md), launched on ONNX Runtime's stream by
// src/core/runtime/kernels/cuda.rs. Compiled to PTX by tools/kernels/build_ptx.sh (no CUDA headers:
// bf16 is handled as raw 16-bit values so the PTX targets compute_70 and needs nothing at run time but
// the driver). Every kernel has a float and a bf16 version, each with a scalar (v1) and an 8-wide (v8)
// access pattern; v8 needs D % 8 == 0 and 16-byte aligned pointers (the host checks both).
//
// All arithmetic is fp32, in the order of the spec; `rnd` is the rounding to the storage type.

typedef unsigned short bf16_t;
typedef long long i64;

__device__ __forceinline__ float bf2f(bf16_t h) { return __uint_as_float(((unsigned)h) << 16); }

// Round to nearest even, NaN kept quiet: what torch's float -> bfloat16 conversion does.
__device__ __forceinline__ bf16_t f2bf(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

template <typename T> struct Io;
template <> struct Io<float> {
    static __device__ __forceinline__ float ld(const float* p, i64 i) { return p[i]; }
    static __device__ __forceinline__ void st(float* p, i64 i, float v) { p[i] = v; }
    static __device__ __forceinline__ float rnd(float v) { return v; }
    // 8 consecutive values starting at p[i] (i a multiple of 8).
    static __device__ __forceinline__ void ld8(const float* p, i64 i, float* v) {
        const float4* q = reinterpret_cast<const float4*>(p + i);
        float4 a = q[0], b = q[1];
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    }
    static __device__ __forceinline__ void st8(float* p, i64 i, const float* v) {
        float4* q = reinterpret_cast<float4*>(p + i);
        q[0] = make_float4(v[0], v[1], v[2], v[3]);
        q[1] = make_float4(v[4], v[5], v[6], v[7]);
    }
};
template <> struct Io<bf16_t> {
    static __device__ __forceinline__ float ld(const bf16_t* p, i64 i) { return bf2f(p[i]); }
    static __device__ __forceinline__ void st(bf16_t* p, i64 i, float v) { p[i] = f2bf(v); }
    static __device__ __forceinline__ float rnd(float v) { return bf2f(f2bf(v)); }
    static __device__ __forceinline__ void ld8(const bf16_t* p, i64 i, float* v) {
        uint4 r = *reinterpret_cast<const uint4*>(p + i);
        unsigned w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            v[2 * k] = __uint_as_float(w[k] << 16);
            v[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
        }
    }
    static __device__ __forceinline__ void st8(bf16_t* p, i64 i, const float* v) {
        unsigned w[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) w[k] = (unsigned)f2bf(v[2 * k]) | ((unsigned)f2bf(v[2 * k + 1]) << 16);
        *reinterpret_cast<uint4*>(p + i) = make_uint4(w[0], w[1], w[2], w[3]);
    }
};

// VEC values at p[i..i+VEC).
template <typename T, int VEC> __device__ __forceinline__ void load(const T* p, i64 i, float* v) {
    if (VEC == 8) {
        Io<T>::ld8(p, i, v);
    } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) v[k] = Io<T>::ld(p, i + k);
    }
}
template <typename T, int VEC> __device__ __forceinline__ void store(T* p, i64 i, const float* v) {
    if (VEC == 8) {
        Io<T>::st8(p, i, v);
    } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) Io<T>::st(p, i + k, v[k]);
    }
}
template <int VEC> __device__ __forceinline__ void load_f32(const float* p, i64 i, float* v) { load<float, VEC>(p, i, v); }

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ float block_sum(float v) {
    __shared__ float warp_sums[32];
    __shared__ float total;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        int warps = blockDim.x >> 5;
        float s = lane < warps ? warp_sums[lane] : 0.0f;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) total = s;
    }
    __syncthreads();
    float r = total;
    __syncthreads();  // warp_sums/total are reused by the next call
    return r;
}

__device__ __forceinline__ int group_of(i64 row, int groups, int split) { return (groups == 2 && row >= split) ? 1 : 0; }

// ModulatedLayerNorm: one block per output row.
template <typename T, int VEC>
__device__ void modulated_layer_norm(const T* x, T* y, const float* mods, const float* weight, const float* bias,
                                     int D, int row_begin, int split, int groups, int K, int shift, int scale,
                                     float eps) {
    const i64 out_row = blockIdx.x;
    const i64 row = out_row + row_begin;
    const T* xr = x + row * D;
    T* yr = y + out_row * D;
    float v[VEC];
    float s = 0.0f;
    for (int j = threadIdx.x * VEC; j < D; j += blockDim.x * VEC) {
        load<T, VEC>(xr, j, v);
#pragma unroll
        for (int k = 0; k < VEC; ++k) s += v[k];
    }
    const float mean = block_sum(s) / (float)D;
    s = 0.0f;
    for (int j = threadIdx.x * VEC; j < D; j += blockDim.x * VEC) {
        load<T, VEC>(xr, j, v);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            float c = v[k] - mean;
            s += c * c;
        }
    }
    const float var = block_sum(s) / (float)D;
    const float rstd = 1.0f / sqrtf(var + eps);
    const int g = group_of(row, groups, split);
    const float* shift_row = (mods && shift >= 0) ? mods + ((i64)g * K + shift) * D : nullptr;
    const float* scale_row = (mods && scale >= 0) ? mods + ((i64)g * K + scale) * D : nullptr;
    float a[VEC];
    for (int j = threadIdx.x * VEC; j < D; j += blockDim.x * VEC) {
        load<T, VEC>(xr, j, v);
#pragma unroll
        for (int k = 0; k < VEC; ++k) v[k] = (v[k] - mean) * rstd;
        if (weight) {
            load_f32<VEC>(weight, j, a);
#pragma unroll
            for (int k = 0; k < VEC; ++k) v[k] = v[k] * a[k];
        }
        if (bias) {
            load_f32<VEC>(bias, j, a);
#pragma unroll
            for (int k = 0; k < VEC; ++k) v[k] = v[k] + a[k];
        }
        if (scale_row) {
            load_f32<VEC>(scale_row, j, a);
#pragma unroll
            for (int k = 0; k < VEC; ++k) v[k] = v[k] * (1.0f + a[k]);
        }
        if (shift_row) {
            load_f32<VEC>(shift_row, j, a);
#pragma unroll
            for (int k = 0; k < VEC; ++k) v[k] = v[k] + a[k];
        }
        store<T, VEC>(yr, j, v);
    }
}

// BiasRmsNormRope: one block per row. With VEC = 8 each thread's values hold whole (even, odd) pairs; the scalar
// variant recomputes the partner of its one value.
template <typename T, int VEC>
__device__ void bias_rms_norm_rope(const T* x, const T* bias, const T* weight, const float* rope, T* y, int D,
                                   int head_dim, float eps) {
    const i64 row = blockIdx.x;
    const T* xr = x + row * D;
    T* yr = y + row * D;
    const float* rr = rope ? rope + row * 2 * head_dim : nullptr;
    float v[VEC], b[VEC];
    float s = 0.0f;
    for (int j = threadIdx.x * VEC; j < D; j += blockDim.x * VEC) {
        load<T, VEC>(xr, j, v);
        if (bias) {
            load<T, VEC>(bias, j, b);
#pragma unroll
            for (int k = 0; k < VEC; ++k) v[k] = Io<T>::rnd(v[k] + b[k]);
        }
#pragma unroll
        for (int k = 0; k < VEC; ++k) s += v[k] * v[k];
    }
    const float r = 1.0f / sqrtf(block_sum(s) / (float)D + eps);
    for (int j = threadIdx.x * VEC; j < D; j += blockDim.x * VEC) {
        load<T, VEC>(xr, j, v);
        if (bias) {
            load<T, VEC>(bias, j, b);
#pragma unroll
            for (int k = 0; k < VEC; ++k) v[k] = Io<T>::rnd(v[k] + b[k]);
        }
        if (weight) {
            load<T, VEC>(weight, j, b);
#pragma unroll
            for (int k = 0; k < VEC; ++k) v[k] = Io<T>::rnd((v[k] * r) * b[k]);
        } else {
#pragma unroll
            for (int k = 0; k < VEC; ++k) v[k] = Io<T>::rnd(v[k] * r);
        }
        if (rr && VEC == 1) {
            // Scalar: the thread holds one value of its (even, odd) pair; the partner's normalised value is
            // recomputed from X (same operations, same rounding) rather than exchanged.
            const int jp = j ^ 1;
            float p = Io<T>::ld(xr, jp);
            if (bias) p = Io<T>::rnd(p + Io<T>::ld(bias, jp));
            p = weight ? Io<T>::rnd((p * r) * Io<T>::ld(weight, jp)) : Io<T>::rnd(p * r);
            const int h = (j & ~1) % head_dim;
            const float c = rr[h], sn = rr[head_dim + h + 1];
            v[0] = (j & 1) ? p * sn + v[0] * c : v[0] * c - p * sn;
        } else if (rr) {
#pragma unroll
            for (int k = 0; k + 1 < VEC; k += 2) {
                const int h = (j + k) % head_dim;
                const float c = rr[h], sn = rr[head_dim + h + 1];
                const float e = v[k], o = v[k + 1];
                v[k] = e * c - o * sn;
                v[k + 1] = e * sn + o * c;
            }
        }
        store<T, VEC>(yr, j, v);
    }
}

// GatedResidual, element-wise over n = R * D values (VEC values per thread and iteration).
template <typename T, int VEC>
__device__ void gated_residual(const T* x, const T* a, const T* bias, const float* mods, T* y, i64 n, int D,
                               int split, int groups, int K, int gate) {
    float xv[VEC], av[VEC], t[VEC];
    for (i64 i = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * VEC; i < n; i += (i64)gridDim.x * blockDim.x * VEC) {
        const i64 row = i / D;
        const int col = (int)(i - row * D);
        load<T, VEC>(x, i, xv);
        load<T, VEC>(a, i, av);
        if (bias) {
            load<T, VEC>(bias, col, t);
#pragma unroll
            for (int k = 0; k < VEC; ++k) av[k] = Io<T>::rnd(av[k] + t[k]);
        }
        load_f32<VEC>(mods + ((i64)group_of(row, groups, split) * K + gate) * D, col, t);
#pragma unroll
        for (int k = 0; k < VEC; ++k) xv[k] = xv[k] + av[k] * t[k];
        store<T, VEC>(y, i, xv);
    }
}

// TailResidual: values before `tail_start` (an element index, a multiple of D) are copied.
template <typename T, int VEC>
__device__ void tail_residual(const T* x, const T* a, const T* bias, T* y, i64 n, int D, i64 tail_start) {
    float xv[VEC], av[VEC], t[VEC];
    for (i64 i = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * VEC; i < n; i += (i64)gridDim.x * blockDim.x * VEC) {
        load<T, VEC>(x, i, xv);
        if (i >= tail_start) {
            load<T, VEC>(a, i - tail_start, av);
            if (bias) {
                load<T, VEC>(bias, (int)((i - tail_start) % D), t);
#pragma unroll
                for (int k = 0; k < VEC; ++k) av[k] = Io<T>::rnd(av[k] + t[k]);
            }
#pragma unroll
            for (int k = 0; k < VEC; ++k) xv[k] = xv[k] + av[k];
        }
        store<T, VEC>(y, i, xv);
    }
}

// BiasGeluTanh, element-wise over n values of rows of D.
template <typename T, int VEC>
__device__ void bias_gelu_tanh(const T* x, const T* bias, T* y, i64 n, int D) {
    float v[VEC], b[VEC];
    for (i64 i = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * VEC; i < n; i += (i64)gridDim.x * blockDim.x * VEC) {
        load<T, VEC>(x, i, v);
        if (bias) {
            load<T, VEC>(bias, (int)(i % D), b);
#pragma unroll
            for (int k = 0; k < VEC; ++k) v[k] = Io<T>::rnd(v[k] + b[k]);
        }
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            const float u = v[k];
            v[k] = 0.5f * u * (1.0f + tanhf(0.7978845608028654f * (u + 0.044715f * (u * u * u))));
        }
        store<T, VEC>(y, i, v);
    }
}

// ChannelRmsNorm over X [B, C, S]: one thread per VEC consecutive positions (VEC = 1 or 4), looping over
// the C channels (stride S). The second pass re-reads X, mostly from L2.
template <typename T, int VEC>
__device__ void channel_rms_norm(const T* x, const T* gamma, const T* bias, T* y, i64 positions, int C, i64 S,
                                 float scale, float eps, int silu) {
    const i64 p = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    if (p >= positions) return;
    const i64 b = p / S, s = p - b * S;
    const T* xb = x + b * C * S + s;
    T* yb = y + b * C * S + s;
    float acc[VEC], v[VEC], den[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = 0.0f;
    for (int c = 0; c < C; ++c) {
        load<T, VEC>(xb, (i64)c * S, v);
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] += v[k] * v[k];
    }
#pragma unroll
    for (int k = 0; k < VEC; ++k) den[k] = fmaxf(sqrtf(acc[k]), eps);
    for (int c = 0; c < C; ++c) {
        load<T, VEC>(xb, (i64)c * S, v);
        const float g = Io<T>::ld(gamma, c);
        const float bc = bias ? Io<T>::ld(bias, c) : 0.0f;
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            float t = Io<T>::rnd(v[k] / den[k]);
            t = Io<T>::rnd(t * scale);
            t = Io<T>::rnd(t * g);
            if (bias) t = Io<T>::rnd(t + bc);
            if (silu) t = t / (1.0f + expf(-t));
            v[k] = t;
        }
        store<T, VEC>(yb, (i64)c * S, v);
    }
}

// 4-wide access for ChannelRmsNorm (S % 4 == 0): 16 bytes of f32, 8 of bf16.
template <> __device__ __forceinline__ void load<float, 4>(const float* p, i64 i, float* v) {
    float4 a = *reinterpret_cast<const float4*>(p + i);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
}
template <> __device__ __forceinline__ void store<float, 4>(float* p, i64 i, const float* v) {
    *reinterpret_cast<float4*>(p + i) = make_float4(v[0], v[1], v[2], v[3]);
}
template <> __device__ __forceinline__ void load<bf16_t, 4>(const bf16_t* p, i64 i, float* v) {
    uint2 r = *reinterpret_cast<const uint2*>(p + i);
    v[0] = __uint_as_float(r.x << 16); v[1] = __uint_as_float(r.x & 0xffff0000u);
    v[2] = __uint_as_float(r.y << 16); v[3] = __uint_as_float(r.y & 0xffff0000u);
}
template <> __device__ __forceinline__ void store<bf16_t, 4>(bf16_t* p, i64 i, const float* v) {
    uint2 r;
    r.x = (unsigned)f2bf(v[0]) | ((unsigned)f2bf(v[1]) << 16);
    r.y = (unsigned)f2bf(v[2]) | ((unsigned)f2bf(v[3]) << 16);
    *reinterpret_cast<uint2*>(p + i) = r;
}

#define HELIOS_CHANNEL_ENTRIES(T, TN, VEC)                                                                           \
    extern "C" __global__ void channel_rms_norm_##TN##_v##VEC(const T* x, const T* gamma, const T* bias, T* y,     \
                                                              i64 positions, int C, i64 S, float scale, float eps,  \
                                                              int silu) {                                           \
        channel_rms_norm<T, VEC>(x, gamma, bias, y, positions, C, S, scale, eps, silu);                             \
    }

HELIOS_CHANNEL_ENTRIES(float, f32, 1)
HELIOS_CHANNEL_ENTRIES(float, f32, 4)
HELIOS_CHANNEL_ENTRIES(bf16_t, bf16, 1)
HELIOS_CHANNEL_ENTRIES(bf16_t, bf16, 4)

// Entry points: <op>_<f32|bf16>_<v1|v8>.
#define HELIOS_ENTRIES(T, TN, VEC)                                                                                   \
    extern "C" __global__ void modulated_layer_norm_##TN##_v##VEC(                                                  \
        const T* x, T* y, const float* mods, const float* weight, const float* bias, int D, int row_begin,          \
        int split, int groups, int K, int shift, int scale, float eps) {                                            \
        modulated_layer_norm<T, VEC>(x, y, mods, weight, bias, D, row_begin, split, groups, K, shift, scale, eps);  \
    }                                                                                                               \
    extern "C" __global__ void bias_rms_norm_rope_##TN##_v##VEC(const T* x, const T* bias, const T* weight,         \
                                                                const float* rope, T* y, int D, int head_dim,        \
                                                                float eps) {                                        \
        bias_rms_norm_rope<T, VEC>(x, bias, weight, rope, y, D, head_dim, eps);                                     \
    }                                                                                                               \
    extern "C" __global__ void gated_residual_##TN##_v##VEC(const T* x, const T* a, const T* bias,                  \
                                                            const float* mods, T* y, i64 n, int D, int split,       \
                                                            int groups, int K, int gate) {                          \
        gated_residual<T, VEC>(x, a, bias, mods, y, n, D, split, groups, K, gate);                                  \
    }                                                                                                               \
    extern "C" __global__ void tail_residual_##TN##_v##VEC(const T* x, const T* a, const T* bias, T* y, i64 n,      \
                                                           int D, i64 tail_start) {                                 \
        tail_residual<T, VEC>(x, a, bias, y, n, D, tail_start);                                                     \
    }                                                                                                               \
    extern "C" __global__ void bias_gelu_tanh_##TN##_v##VEC(const T* x, const T* bias, T* y, i64 n, int D) {        \
        bias_gelu_tanh<T, VEC>(x, bias, y, n, D);                                                                   \
    }

HELIOS_ENTRIES(float, f32, 1)
HELIOS_ENTRIES(float, f32, 8)
HELIOS_ENTRIES(bf16_t, bf16, 1)
HELIOS_ENTRIES(bf16_t, bf16, 8)
