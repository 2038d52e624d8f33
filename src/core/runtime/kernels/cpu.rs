//! The `com.helios` operators on the host: the CPU provider's kernels and the reference the CUDA kernels
//! are checked against. Plain loops over rows, fp32 arithmetic in the order of `docs/fused-ops.md`.

use half::bf16;

/// A storage type of the operators: widened to f32 exactly, rounded back once per spec step.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    /// Exact widening (`f` in the spec).
    fn f(self) -> f32;
    /// Conversion of an f32 result (`round` in the spec; round to nearest even for bf16).
    fn r(v: f32) -> Self;
    /// `round` then widen: the value a tensor of this type would hold.
    fn rf(v: f32) -> f32 {
        Self::r(v).f()
    }
}

impl Elem for f32 {
    fn f(self) -> f32 {
        self
    }
    fn r(v: f32) -> Self {
        v
    }
}

impl Elem for bf16 {
    fn f(self) -> f32 {
        self.to_f32()
    }
    fn r(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

/// A modulation table `[groups, rows_per_group, d]` and the row where group 1 starts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mods<'a> {
    pub data: &'a [f32],
    pub groups: usize,
    pub per_group: usize,
    pub split: usize,
}

impl<'a> Mods<'a> {
    /// Row `which` of the group that input row `row` belongs to.
    fn row(&self, row: usize, which: usize, d: usize) -> &'a [f32] {
        let g = usize::from(self.groups == 2 && row >= self.split);
        let start = (g * self.per_group + which) * d;
        &self.data[start..start + d]
    }
}

/// `ModulatedLayerNorm`: `y` holds the rows `row_begin..` of `x`.
#[allow(
    clippy::too_many_arguments,
    reason = "one argument per operator input and attribute"
)]
pub(crate) fn modulated_layer_norm<T: Elem>(
    x: &[T],
    d: usize,
    row_begin: usize,
    mods: Option<Mods<'_>>,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    shift: Option<usize>,
    scale: Option<usize>,
    eps: f32,
    y: &mut [T],
) {
    for (out_row, yr) in y.chunks_exact_mut(d).enumerate() {
        let row = out_row + row_begin;
        let xr = &x[row * d..(row + 1) * d];
        let mean = xr.iter().map(|v| v.f()).sum::<f32>() / d as f32;
        let var = xr
            .iter()
            .map(|v| {
                let c = v.f() - mean;
                c * c
            })
            .sum::<f32>()
            / d as f32;
        let rstd = 1.0 / (var + eps).sqrt();
        let shift_row = mods.zip(shift).map(|(m, s)| m.row(row, s, d));
        let scale_row = mods.zip(scale).map(|(m, s)| m.row(row, s, d));
        for j in 0..d {
            let mut t = (xr[j].f() - mean) * rstd;
            if let Some(w) = weight {
                t *= w[j];
            }
            if let Some(b) = bias {
                t += b[j];
            }
            if let Some(s) = scale_row {
                t *= 1.0 + s[j];
            }
            if let Some(s) = shift_row {
                t += s[j];
            }
            yr[j] = T::r(t);
        }
    }
}

/// `BiasRmsNormRope` over rows of `d`; `rope` is `[rows, 2 * head_dim]` (`[cos | sin]` per row).
pub(crate) fn bias_rms_norm_rope<T: Elem>(
    x: &[T],
    d: usize,
    bias: Option<&[T]>,
    weight: Option<&[T]>,
    rope: Option<(&[f32], usize)>,
    eps: f32,
    y: &mut [T],
) {
    // One row of f32 scratch a thread, kept between calls: a node's call allocates nothing once warm.
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with_borrow_mut(|q| {
        q.clear();
        q.resize(d, 0.0);
        for (row, (xr, yr)) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)).enumerate() {
            for j in 0..d {
                q[j] = match bias {
                    Some(b) => T::rf(xr[j].f() + b[j].f()),
                    None => xr[j].f(),
                };
            }
            let ms = q.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let r = 1.0 / (ms + eps).sqrt();
            for j in 0..d {
                q[j] = match weight {
                    Some(w) => T::rf((q[j] * r) * w[j].f()),
                    None => T::rf(q[j] * r),
                };
            }
            match rope {
                Some((table, head_dim)) => {
                    let rr = &table[row * 2 * head_dim..(row + 1) * 2 * head_dim];
                    for j in (0..d).step_by(2) {
                        let k = j % head_dim;
                        let (c, s) = (rr[k], rr[head_dim + k + 1]);
                        let (e, o) = (q[j], q[j + 1]);
                        yr[j] = T::r(e * c - o * s);
                        yr[j + 1] = T::r(e * s + o * c);
                    }
                }
                None => {
                    for j in 0..d {
                        yr[j] = T::r(q[j]);
                    }
                }
            }
        }
    });
}

/// `a + bias`, rounded as the Linear's output tensor would be.
fn biased<T: Elem>(a: T, bias: Option<&[T]>, col: usize) -> f32 {
    match bias {
        Some(b) => T::rf(a.f() + b[col].f()),
        None => a.f(),
    }
}

/// `GatedResidual`: `y = x + (a + bias) * gate` with the gate row of each row's group.
pub(crate) fn gated_residual<T: Elem>(
    x: &[T],
    a: &[T],
    d: usize,
    bias: Option<&[T]>,
    mods: Mods<'_>,
    gate: usize,
    y: &mut [T],
) {
    for (row, ((xr, ar), yr)) in x
        .chunks_exact(d)
        .zip(a.chunks_exact(d))
        .zip(y.chunks_exact_mut(d))
        .enumerate()
    {
        let g = mods.row(row, gate, d);
        for j in 0..d {
            yr[j] = T::r(xr[j].f() + biased(ar[j], bias, j) * g[j]);
        }
    }
}

/// `TailResidual`: the last `a.len() / d` rows of `x` get `a + bias` added.
pub(crate) fn tail_residual<T: Elem>(x: &[T], a: &[T], d: usize, bias: Option<&[T]>, y: &mut [T]) {
    let head = x.len() - a.len();
    y[..head].copy_from_slice(&x[..head]);
    for (i, (yv, (xv, av))) in y[head..]
        .iter_mut()
        .zip(x[head..].iter().zip(a))
        .enumerate()
    {
        *yv = T::r(xv.f() + biased(*av, bias, i % d));
    }
}

/// GELU with the tanh approximation, as torch computes it in f32.
pub(crate) fn gelu_tanh(u: f32) -> f32 {
    0.5 * u * (1.0 + (0.797_884_6_f32 * (u + 0.044715 * (u * u * u))).tanh())
}

/// `BiasGeluTanh` over rows of `d`.
pub(crate) fn bias_gelu_tanh<T: Elem>(x: &[T], d: usize, bias: Option<&[T]>, y: &mut [T]) {
    for (i, (yv, xv)) in y.iter_mut().zip(x).enumerate() {
        *yv = T::r(gelu_tanh(biased(*xv, bias, i % d)));
    }
}

/// `ChannelRmsNorm` of `x` laid out `[B, channels, positions]`.
#[allow(
    clippy::too_many_arguments,
    reason = "one argument per operator input and attribute"
)]
pub(crate) fn channel_rms_norm<T: Elem>(
    x: &[T],
    channels: usize,
    positions: usize,
    gamma: &[T],
    bias: Option<&[T]>,
    scale: f32,
    eps: f32,
    silu: bool,
    y: &mut [T],
) {
    let plane = channels * positions;
    for (xb, yb) in x.chunks_exact(plane).zip(y.chunks_exact_mut(plane)) {
        for s in 0..positions {
            let n = (0..channels)
                .map(|c| {
                    let v = xb[c * positions + s].f();
                    v * v
                })
                .sum::<f32>()
                .sqrt();
            let den = n.max(eps);
            for c in 0..channels {
                let mut t = T::rf(xb[c * positions + s].f() / den);
                t = T::rf(t * scale);
                t = T::rf(t * gamma[c].f());
                if let Some(b) = bias {
                    t = T::rf(t + b[c].f());
                }
                if silu {
                    t /= 1.0 + (-t).exp();
                }
                yb[c * positions + s] = T::r(t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 113) as f32 / 113.0 - 0.5) * scale)
            .collect()
    }

    #[test]
    fn modulation_rows_follow_the_split() {
        let d = 4;
        let x = ramp(3 * d, 2.0);
        // group 0: scale 0, shift 0; group 1: scale 1 (doubles), shift 10
        let mut table = vec![0.0f32; 2 * 2 * d];
        table[2 * d..3 * d].fill(10.0);
        table[3 * d..4 * d].fill(1.0);
        let mods = Mods {
            data: &table,
            groups: 2,
            per_group: 2,
            split: 2,
        };
        let mut plain = vec![0.0f32; 3 * d];
        modulated_layer_norm(&x, d, 0, None, None, None, None, None, 1e-6, &mut plain);
        let mut y = vec![0.0f32; 3 * d];
        modulated_layer_norm(
            &x,
            d,
            0,
            Some(mods),
            None,
            None,
            Some(0),
            Some(1),
            1e-6,
            &mut y,
        );
        assert_eq!(
            &y[..2 * d],
            &plain[..2 * d],
            "rows before the split use group 0 (no modulation)"
        );
        for j in 0..d {
            assert_eq!(
                y[2 * d + j],
                plain[2 * d + j] * 2.0 + 10.0,
                "row 2 uses group 1"
            );
        }
        let mut tail = vec![0.0f32; d];
        modulated_layer_norm(&x, d, 2, None, None, None, None, None, 1e-6, &mut tail);
        assert_eq!(tail, plain[2 * d..], "row_begin selects the last rows");
        let mean: f32 = plain[..d].iter().sum::<f32>() / d as f32;
        assert!(mean.abs() < 1e-6, "a normalised row has zero mean: {mean}");
    }

    #[test]
    fn rope_rotates_pairs_after_the_rms_norm() {
        let d = 8;
        let head_dim = 4;
        let x = ramp(d, 3.0);
        // cos 0, sin 1 everywhere: (e, o) -> (-o, e)
        let mut table = vec![0.0f32; 2 * head_dim];
        table[head_dim..].fill(1.0);
        let mut normed = vec![0.0f32; d];
        bias_rms_norm_rope(&x, d, None, None, None, 1e-6, &mut normed);
        let ms = normed.iter().map(|v| v * v).sum::<f32>() / d as f32;
        assert!(
            (ms - 1.0).abs() < 1e-5,
            "RMS-normalised row has unit mean square: {ms}"
        );
        let mut y = vec![0.0f32; d];
        bias_rms_norm_rope(&x, d, None, None, Some((&table, head_dim)), 1e-6, &mut y);
        for j in (0..d).step_by(2) {
            assert_eq!((y[j], y[j + 1]), (-normed[j + 1], normed[j]));
        }
    }

    #[test]
    fn bf16_rounds_the_bias_sum_before_the_norm() {
        // 1 + 2^-9 is not a bf16 value: the biased input rounds to 1 first, so every element is equal and
        // the RMS norm maps each to exactly 1.
        let x = vec![bf16::from_f32(1.0); 4];
        let b = vec![bf16::from_f32(2f32.powi(-9)); 4];
        let mut y = vec![bf16::ZERO; 4];
        bias_rms_norm_rope(&x, 4, Some(&b), None, None, 0.0, &mut y);
        assert!(y.iter().all(|v| v.to_f32() == 1.0), "{y:?}");
    }

    #[test]
    fn residuals_gate_and_tail() {
        let d = 2;
        let x = vec![1.0f32, 2.0, 3.0, 4.0];
        let a = vec![10.0f32, 20.0, 30.0, 40.0];
        let gates = [0.5f32, 0.5, 2.0, 2.0];
        let mods = Mods {
            data: &gates,
            groups: 2,
            per_group: 1,
            split: 1,
        };
        let mut y = vec![0.0f32; 4];
        gated_residual(&x, &a, d, Some(&[1.0, 1.0]), mods, 0, &mut y);
        assert_eq!(y, vec![6.5, 12.5, 65.0, 86.0]);
        let mut t = vec![0.0f32; 4];
        tail_residual(&x, &a[2..], d, None, &mut t);
        assert_eq!(t, vec![1.0, 2.0, 33.0, 44.0]);
    }

    #[test]
    fn channel_norm_normalises_over_channels_per_position() {
        // [1, 2 channels, 2 positions]: position 0 = (3, 4), position 1 = (0, 0) (eps keeps it finite).
        let x = [3.0f32, 0.0, 4.0, 0.0];
        let gamma = [1.0f32, 2.0];
        let mut y = [0.0f32; 4];
        channel_rms_norm(&x, 2, 2, &gamma, None, 2.0, 1e-12, false, &mut y);
        assert_eq!(y, [3.0 / 5.0 * 2.0, 0.0, 4.0 / 5.0 * 2.0 * 2.0, 0.0]);
        let mut z = [0.0f32; 4];
        channel_rms_norm(&x, 2, 2, &gamma, None, 2.0, 1e-12, true, &mut z);
        for (a, b) in z.iter().zip(y) {
            assert_eq!(*a, b / (1.0 + (-b).exp()), "silu follows the norm");
        }
    }

    #[test]
    fn gelu_matches_known_values() {
        assert_eq!(gelu_tanh(0.0), 0.0);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert!((gelu_tanh(-3.0) + 0.003_637_392).abs() < 1e-6);
        let mut y = [0.0f32; 2];
        bias_gelu_tanh(&[0.5f32, -0.5], 2, Some(&[0.5, 0.5]), &mut y);
        assert_eq!(y, [gelu_tanh(1.0), 0.0]);
    }
}
