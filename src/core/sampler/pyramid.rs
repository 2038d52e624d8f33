//! Latent arithmetic between transformer calls: pyramid down/upsampling, block-noise renoising, the
//! DMD update and precision rounding. Latents are `[1, C, T, H, W]` f32 arrays.

use half::{bf16, f16};
use ndarray::{Array5, Zip};

use crate::core::manifest::DType;

/// Rounds every value to `precision` (the reference's `.to(transformer_dtype)`), in place.
pub fn round_to(precision: DType, x: &mut Array5<f32>) {
    match precision {
        DType::Bf16 => x.mapv_inplace(|v| bf16::from_f32(v).to_f32()),
        DType::F16 => x.mapv_inplace(|v| f16::from_f32(v).to_f32()),
        DType::F32 | DType::F64 | DType::I64 | DType::U8 => {}
    }
}

/// Rounds one value to `precision`.
#[inline]
pub fn round_value(precision: DType, v: f32) -> f32 {
    match precision {
        DType::Bf16 => bf16::from_f32(v).to_f32(),
        DType::F16 => f16::from_f32(v).to_f32(),
        DType::F32 | DType::F64 | DType::I64 | DType::U8 => v,
    }
}

/// Stage-0 start point: `stages - 1` times (bilinear ½ with align_corners=False, then ×2).
///
/// At an exact factor 2 torch's bilinear kernel computes `h0·(w0·a + w1·b) + h1·(w0·c + w1·d)` with all
/// weights ½ (diffusers 0.42.1 `HeliosPyramidPipeline.__call__`, `F.interpolate(.., "bilinear") * 2`);
/// the ½ factors are exact, so this is `½·((a+b) + (c+d))` with the same roundings.
pub fn downsample_start(noise: &Array5<f32>, halvings: usize) -> Array5<f32> {
    let mut x = noise.clone();
    for _ in 0..halvings {
        let (b, c, t, h, w) = x.dim();
        let mut out = Array5::<f32>::zeros((b, c, t, h / 2, w / 2));
        Zip::indexed(&mut out).for_each(|(bi, ci, ti, i, j), o| {
            let a = x[[bi, ci, ti, 2 * i, 2 * j]];
            let bb = x[[bi, ci, ti, 2 * i, 2 * j + 1]];
            let cc = x[[bi, ci, ti, 2 * i + 1, 2 * j]];
            let d = x[[bi, ci, ti, 2 * i + 1, 2 * j + 1]];
            let top = 0.5 * (0.5 * a + 0.5 * bb);
            let bottom = 0.5 * (0.5 * cc + 0.5 * d);
            *o = (top + bottom) * 2.0;
        });
        x = out;
    }
    x
}

/// Nearest ×2 upsample over H and W.
pub fn upsample_nearest(x: &Array5<f32>) -> Array5<f32> {
    let (b, c, t, h, w) = x.dim();
    Array5::from_shape_fn((b, c, t, 2 * h, 2 * w), |(bi, ci, ti, i, j)| {
        x[[bi, ci, ti, i / 2, j / 2]]
    })
}

/// Block noise for a `[1, C, T, H, W]` grid from standard normals `z` (`[C·T·H/2·W/2, 4]`, row-major):
/// `n = z·Lᵀ`, component `2·p_h + p_w` of block (i, k) to pixel (2i+p_h, 2k+p_w)
/// (diffusers 0.42.1 `HeliosPyramidPipeline.sample_block_noise`).
pub fn block_noise(
    z: &[f32],
    cholesky: &[Vec<f32>],
    dim: (usize, usize, usize, usize, usize),
) -> Array5<f32> {
    let (b, c, t, h, w) = dim;
    debug_assert_eq!(z.len(), b * c * t * (h / 2) * (w / 2) * 4);
    let mut out = Array5::<f32>::zeros(dim);
    let (bh, bw) = (h / 2, w / 2);
    for bi in 0..b {
        for ci in 0..c {
            for ti in 0..t {
                for i in 0..bh {
                    for k in 0..bw {
                        let row = (((bi * c + ci) * t + ti) * bh + i) * bw + k;
                        let zr = &z[row * 4..row * 4 + 4];
                        for j in 0..4 {
                            let l = &cholesky[j];
                            // (z @ L.T)[j] = Σ_m z[m]·L[j][m]
                            let v = zr[0] * l[0] + zr[1] * l[1] + zr[2] * l[2] + zr[3] * l[3];
                            out[[bi, ci, ti, 2 * i + j / 2, 2 * k + j % 2]] = v;
                        }
                    }
                }
            }
        }
    }
    out
}

/// Start point of stage s > 0: `α·Up(x̂₀) + β·N` in the transformer precision (the pipeline's
/// "Fix the stage" block; `noise.to(transformer_dtype)` then scalar ops in that dtype).
pub fn renoise(
    upsampled: &Array5<f32>,
    noise: &Array5<f32>,
    alpha: f64,
    beta: f64,
    precision: DType,
) -> Array5<f32> {
    // torch multiplies a float tensor by a Python float in the tensor's opmath (f32), rounding each op
    // to the tensor dtype.
    let (a, b) = (alpha as f32, beta as f32);
    let mut out = upsampled.clone();
    Zip::from(&mut out).and(noise).for_each(|o, &n| {
        let n = round_value(precision, n);
        let left = round_value(precision, a * *o);
        let right = round_value(precision, b * n);
        *o = round_value(precision, left + right);
    });
    out
}

/// The DMD step of diffusers 0.42.1 `HeliosDMDScheduler.step` for one sample.
///
/// `x̂₀ = x − σ·v` in f64, rounded to the velocity's precision; if `sigma_next` is given,
/// `next = (1 − σ')·x̂₀ + σ'·start` in f64, rounded to the start point's precision.
pub fn dmd_step(
    sample: &Array5<f32>,
    velocity: &Array5<f32>,
    start: &Array5<f32>,
    sigma: f64,
    sigma_next: Option<f64>,
    velocity_precision: DType,
    start_precision: DType,
) -> (Array5<f32>, Option<Array5<f32>>) {
    let mut x0 = Array5::<f32>::zeros(sample.raw_dim());
    Zip::from(&mut x0)
        .and(sample)
        .and(velocity)
        .for_each(|o, &x, &v| {
            *o = round_value(velocity_precision, (x as f64 - sigma * v as f64) as f32);
        });
    let next = sigma_next.map(|s| {
        let mut next = Array5::<f32>::zeros(sample.raw_dim());
        Zip::from(&mut next)
            .and(&x0)
            .and(start)
            .for_each(|o, &x, &n| {
                *o = round_value(
                    start_precision,
                    ((1.0 - s) * x as f64 + s * n as f64) as f32,
                );
            });
        next
    });
    (x0, next)
}

/// Counts NaN and infinite values.
pub fn count_non_finite(x: &Array5<f32>) -> usize {
    x.iter().filter(|v| !v.is_finite()).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::sampler::noise::CPU_BLOCK_NOISE_CHOLESKY;

    #[test]
    fn downsample_is_twice_the_box_mean() {
        let x = Array5::from_shape_fn((1, 1, 1, 4, 4), |(_, _, _, i, j)| (i * 4 + j) as f32);
        let y = downsample_start(&x, 1);
        assert_eq!(y.dim(), (1, 1, 1, 2, 2));
        // block (0,0) holds 0,1,4,5: mean 2.5, ×2 = 5
        assert_eq!(y[[0, 0, 0, 0, 0]], 5.0);
        assert_eq!(y[[0, 0, 0, 1, 1]], 2.0 * (10.0 + 11.0 + 14.0 + 15.0) / 4.0);
    }

    #[test]
    fn upsample_copies_each_value_to_a_block() {
        let x = Array5::from_shape_fn((1, 1, 1, 2, 2), |(_, _, _, i, j)| (i * 2 + j) as f32);
        let y = upsample_nearest(&x);
        assert_eq!(y[[0, 0, 0, 3, 3]], 3.0);
        assert_eq!(y[[0, 0, 0, 1, 0]], 0.0);
        assert_eq!(y[[0, 0, 0, 0, 2]], 1.0);
    }

    #[test]
    fn block_noise_sums_to_about_zero_per_block() {
        let l: Vec<Vec<f32>> = CPU_BLOCK_NOISE_CHOLESKY
            .iter()
            .map(|r| r.to_vec())
            .collect();
        let z = vec![0.7f32, -1.2, 0.3, 2.0];
        let n = block_noise(&z, &l, (1, 1, 1, 2, 2));
        let sum: f32 = n.iter().sum();
        // the covariance has rank 3 with the all-ones direction null (up to the 1e-8 jitter)
        assert!(sum.abs() < 1e-3, "block sum {sum}");
        assert_eq!(
            n[[0, 0, 0, 0, 0]],
            0.7,
            "first component is z0 since L[0] = e0"
        );
    }

    #[test]
    fn dmd_step_follows_the_reference_equations() {
        let x = Array5::from_elem((1, 1, 1, 1, 2), 1.0f32);
        let v = Array5::from_elem((1, 1, 1, 1, 2), 0.5f32);
        let s = Array5::from_elem((1, 1, 1, 1, 2), -1.0f32);
        let (x0, next) = dmd_step(&x, &v, &s, 0.8, Some(0.25), DType::F32, DType::F32);
        assert!((x0[[0, 0, 0, 0, 0]] - 0.6).abs() < 1e-7);
        let next = next.expect("a non-final step returns the next sample");
        assert!((next[[0, 0, 0, 0, 1]] - (0.75 * 0.6 - 0.25)).abs() < 1e-7);
        let (_, last) = dmd_step(&x, &v, &s, 0.8, None, DType::F32, DType::F32);
        assert!(last.is_none());
    }

    #[test]
    fn bf16_rounding_is_applied() {
        let mut x = Array5::from_elem((1, 1, 1, 1, 1), 1.0f32 + 1.0 / 1024.0);
        round_to(DType::Bf16, &mut x);
        assert_eq!(x[[0, 0, 0, 0, 0]], 1.0, "bf16 keeps 8 bits of mantissa");
    }
}
