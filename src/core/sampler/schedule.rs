//! The pyramid DMD schedule: per-stage timesteps and sigmas, μ, and the stage renoise constants.
//!
//! Mirrors diffusers 0.42.1 `HeliosDMDScheduler` (`init_sigmas`, `init_sigmas_for_each_stage`,
//! `set_timesteps`, `_time_shift_linear`) and the pipeline's `calculate_shift`, all in f64 as there.

use crate::core::manifest::{SchedulerConfig, TimeShiftType};

/// Timesteps and sigmas of one pyramid stage.
#[derive(Clone, Debug, PartialEq)]
pub struct StageSchedule {
    /// Model timesteps t_i (the model gets ⌊t_i⌋), `n` values.
    pub timesteps: Vec<f64>,
    /// σ_0..σ_n with σ_n = 0, `n + 1` values.
    pub sigmas: Vec<f64>,
    /// The shift μ used for this stage.
    pub mu: f64,
}

impl StageSchedule {
    /// Number of denoising steps in the stage.
    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }

    /// σ for a model timestep as `HeliosDMDScheduler.convert_flow_pred_to_x0` looks it up: the index of
    /// the nearest schedule timestep to the truncated one.
    pub fn sigma_for(&self, timestep: i64) -> f64 {
        let t = timestep as f64;
        let mut best = 0;
        for (i, v) in self.timesteps.iter().enumerate() {
            // strict `<` keeps the first minimum, as torch.argmin does
            if (v - t).abs() < (self.timesteps[best] - t).abs() {
                best = i;
            }
        }
        self.sigmas[best]
    }
}

/// The scheduler state that does not depend on the chunk: stage ranges and per-stage timestep grids.
#[derive(Clone, Debug)]
pub struct PyramidSchedule {
    config: SchedulerConfig,
    /// Start sigma of each stage on the original global grid (`ori_start_sigmas`).
    ori_start_sigmas: Vec<f64>,
    /// (max, min) of each stage's 1000-point timestep grid (`timesteps_per_stage`).
    stage_t_range: Vec<(f64, f64)>,
}

/// The global grid σ_g[i] of `init_sigmas` (length `num_train_timesteps`).
fn global_sigmas(cfg: &SchedulerConfig) -> Vec<f64> {
    let n = cfg.num_train_timesteps as usize;
    let shift = cfg.shift;
    // alphas = linspace(1, 1/N, N+1); sigmas = 1 - alphas; shifted; flipped; last dropped.
    let alphas = linspace(1.0, 1.0 / n as f64, n + 1);
    let mut sigmas: Vec<f64> = alphas
        .iter()
        .map(|a| {
            let s = 1.0 - a;
            shift * s / (1.0 + (shift - 1.0) * s)
        })
        .collect();
    sigmas.reverse();
    sigmas.truncate(n);
    sigmas
}

/// numpy.linspace in f64 (same formula: start + i*step, last value exact).
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let div = (num - 1) as f64;
            let step = (stop - start) / div;
            let mut v: Vec<f64> = (0..num).map(|i| start + i as f64 * step).collect();
            v[num - 1] = stop;
            v
        }
    }
}

impl PyramidSchedule {
    /// Builds the per-stage bookkeeping of `init_sigmas_for_each_stage`.
    ///
    /// `config` is expected to have passed [`crate::core::manifest::ModelManifest::validate`]; indices are
    /// clamped anyway, so a config that did not never panics here.
    pub fn new(config: &SchedulerConfig) -> Self {
        let n = (config.num_train_timesteps as usize).max(2);
        let sigmas = global_sigmas(config);
        let timesteps: Vec<f64> = sigmas.iter().map(|s| s * n as f64).collect();
        let stages = config.stages;
        let mut ori_start_sigmas = Vec::with_capacity(stages);
        let mut distance = Vec::with_capacity(stages);
        for s in 0..stages {
            // `as usize` saturates negatives to 0, as the reference clamps with max(.., 0)
            let range = |i: usize| config.stage_range.get(i).copied().unwrap_or(1.0);
            let start_idx = ((range(s) * n as f64) as usize).min(n - 1);
            let end_idx = ((range(s + 1) * n as f64) as usize).min(n);
            let mut start_sigma = sigmas[start_idx];
            let end_sigma = if end_idx < n { sigmas[end_idx] } else { 0.0 };
            ori_start_sigmas.push(start_sigma);
            if s != 0 {
                let ori = 1.0 - start_sigma;
                let g = config.gamma;
                let corrected = (1.0 / ((1.0 + 1.0 / g).sqrt() * (1.0 - ori) + ori)) * ori;
                start_sigma = 1.0 - corrected;
            }
            distance.push(start_sigma - end_sigma);
        }
        let total: f64 = distance.iter().sum();
        let mut stage_t_range = Vec::with_capacity(stages);
        for s in 0..stages {
            let start_ratio = if s == 0 {
                0.0
            } else {
                distance[..s].iter().sum::<f64>() / total
            };
            let end_ratio = if s == stages - 1 {
                0.9999999999999999
            } else {
                distance[..=s].iter().sum::<f64>() / total
            };
            let t_max = timesteps[((start_ratio * n as f64) as usize).min(n - 1)].min(999.0);
            let t_min = timesteps[((end_ratio * n as f64) as usize).min(n - 1)];
            // The stage grid is linspace(t_max, t_min, N+1) without its last point: its max is t_max,
            // its min the second-to-last point.
            let grid = linspace(t_max, t_min, n + 1);
            stage_t_range.push((grid[0], grid[n - 1]));
        }
        Self {
            config: config.clone(),
            ori_start_sigmas,
            stage_t_range,
        }
    }

    /// The pipeline's `calculate_shift` for a token count.
    pub fn mu(&self, image_seq_len: usize) -> f64 {
        let c = &self.config;
        let m = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len);
        let b = c.base_shift - m * c.base_image_seq_len;
        image_seq_len as f64 * m + b
    }

    fn time_shift(&self, mu: f64, t: f64) -> f64 {
        match self.config.time_shift_type {
            TimeShiftType::Linear => mu / (mu + (1.0 / t - 1.0)),
            // libm, not std: std's exp calls the platform libm, whose last bits differ between platforms.
            TimeShiftType::Exponential => libm::exp(mu) / (libm::exp(mu) + (1.0 / t - 1.0)),
        }
    }

    /// `set_timesteps(steps, stage, mu, amplify)` for a multi-stage scheduler.
    pub fn stage(&self, stage: usize, steps: usize, mu: f64, amplify: bool) -> StageSchedule {
        let n = (self.config.num_train_timesteps as usize).max(2);
        let m = if amplify { 2 * steps + 1 } else { steps + 1 };
        let (t_first, t_last) = self.stage_t_range[stage];
        let mut timesteps = linspace(t_first, t_last, m);
        // sigmas_per_stage = linspace(0.999, 0, N+1)[:-1]: first 0.999, last 0.999/N.
        let stage_sig = linspace(0.999, 0.0, n + 1);
        let mut sigmas = linspace(stage_sig[0], stage_sig[n - 1], m);
        timesteps.pop();
        sigmas.pop();
        sigmas.push(0.0);
        if self.config.use_dynamic_shifting {
            for s in sigmas.iter_mut() {
                // 1/0 - 1 = inf in the reference; μ/(μ+inf) = 0 keeps σ=0.
                *s = self.time_shift(mu, *s);
            }
            let (t_max, t_min) = self.stage_t_range[stage];
            timesteps = sigmas[..sigmas.len() - 1]
                .iter()
                .map(|s| t_min + s * (t_max - t_min))
                .collect();
        }
        StageSchedule {
            timesteps,
            sigmas,
            mu,
        }
    }

    /// Renoise constants (α_s, β_s) for entering stage `s > 0` (pipeline "Fix the stage").
    pub fn renoise(&self, stage: usize) -> (f64, f64) {
        let ori = 1.0 - self.ori_start_sigmas[stage];
        let g = self.config.gamma;
        let alpha = 1.0 / ((1.0 + 1.0 / g).sqrt() * (1.0 - ori) + ori);
        let beta = alpha * (1.0 - ori) / g.sqrt();
        (alpha, beta)
    }

    /// Block-noise correlation γ.
    pub fn gamma(&self) -> f64 {
        self.config.gamma
    }

    /// Number of stages.
    pub fn stages(&self) -> usize {
        self.config.stages
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::manifest::tests::tiny;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// Golden values from the spec §1.6 (verified against diffusers there).
    #[test]
    fn matches_reference_schedule_at_384x640() {
        let sched = PyramidSchedule::new(&tiny().scheduler);
        let mu01 = sched.mu(9 * 12 * 20 / 4);
        let mu2 = sched.mu(9 * 24 * 40 / 4);
        assert!(
            close(mu01, 0.5480729166666667, 1e-15),
            "mu stage 0/1: {mu01}"
        );
        assert!(close(mu2, 0.8222916666666666, 1e-15), "mu stage 2: {mu2}");
        let s0 = sched.stage(0, 2, mu01, false);
        assert!(
            close(s0.timesteps[0], 998.5342266464115, 1e-9),
            "{:?}",
            s0.timesteps
        );
        assert!(
            close(s0.timesteps[1], 833.9635639554095, 1e-9),
            "{:?}",
            s0.timesteps
        );
        assert!(
            close(s0.sigmas[1], 0.354035137941564, 1e-12),
            "{:?}",
            s0.sigmas
        );
        assert_eq!(s0.sigmas[2], 0.0);
        let s1 = sched.stage(1, 2, mu01, false);
        assert!(
            close(s1.timesteps[0], 742.6046450758411, 1e-9),
            "{:?}",
            s1.timesteps
        );
        assert!(
            close(s1.timesteps[1], 512.4628589688932, 1e-9),
            "{:?}",
            s1.timesteps
        );
        let s2 = sched.stage(2, 2, mu2, false);
        assert!(
            close(s2.timesteps[0], 385.1468332012363, 1e-9),
            "{:?}",
            s2.timesteps
        );
        assert!(
            close(s2.sigmas[0], 0.9987841492578369, 1e-12),
            "{:?}",
            s2.sigmas
        );
        assert!(
            close(s2.sigmas[1], 0.45123993004371077, 1e-12),
            "{:?}",
            s2.sigmas
        );
        let a2 = sched.stage(2, 2, mu2, true);
        assert_eq!(a2.steps(), 4);
        assert!(close(a2.timesteps[3], 84.216, 1e-3), "{:?}", a2.timesteps);
    }

    #[test]
    fn matches_reference_without_dynamic_shift() {
        let mut cfg = tiny().scheduler;
        cfg.use_dynamic_shifting = false;
        let sched = PyramidSchedule::new(&cfg);
        let s0 = sched.stage(0, 2, 0.0, false);
        assert!(close(s0.timesteps[0], 999.0, 1e-9) && close(s0.timesteps[1], 871.255872, 1e-5));
        assert!(close(s0.sigmas[1], 0.4999995, 1e-9), "{:?}", s0.sigmas);
        let s2 = sched.stage(2, 2, 0.0, false);
        assert!(
            close(s2.timesteps[1], 193.4988075, 1e-5),
            "{:?}",
            s2.timesteps
        );
        let a = sched.stage(1, 2, 0.0, true);
        assert!(close(a.sigmas[1], 0.74949975, 1e-9) && close(a.sigmas[3], 0.25049925, 1e-9));
    }

    #[test]
    fn renoise_constants_match_reference() {
        let sched = PyramidSchedule::new(&tiny().scheduler);
        let (a1, b1) = sched.renoise(1);
        let (a2, b2) = sched.renoise(2);
        assert!(close(a1, 0.6001201440528393, 1e-13) && close(b1, 0.6926122274238059, 1e-13));
        assert!(close(a2, 0.7498129216760419, 1e-13) && close(b2, 0.4333367310543098, 1e-13));
    }

    fn bits(values: &[f64]) -> Vec<u64> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    /// Bit-exact timesteps and sigmas of helios-tiny's scheduler at 384x640 (stage 0 plain, stage 2
    /// amplified), with its linear time shift and with the exponential one (libm's `exp`), produced once
    /// by this implementation on x86_64 Linux. The tests above check the linear ones against diffusers to
    /// a tolerance; this one fails on any change in the last bit, which would change every generated frame.
    #[test]
    fn schedule_matches_its_golden_bits() {
        let golden = [
            (
                TimeShiftType::Linear,
                [0x408f_3446_189e_b7ea, 0x408a_0fb5_6104_e0b5],
                [0x3fef_f110_bdf3_5c86, 0x3fd6_a882_fec6_01e6, 0],
                [
                    0x4078_1259_6dc5_546e,
                    0x4071_2931_882a_b641,
                    0x4065_d870_49c3_65ac,
                    0x4055_0dd4_0a35_b5aa,
                ],
                [
                    0x3fef_f60a_2d1a_6b41,
                    0x3fe6_c094_655d_7372,
                    0x3fdc_e11d_718b_f8e3,
                    0x3fcb_9821_8adb_81f8,
                    0,
                ],
            ),
            (
                TimeShiftType::Exponential,
                [0x408f_36d1_6825_676e, 0x408c_4b4a_e1f6_215c],
                [0x3fef_fb43_33f1_5b4d, 0x3fe4_472b_dfe6_5f31, 0],
                [
                    0x4078_171e_fcf1_425a,
                    0x4075_068f_f375_ff8b,
                    0x4070_c512_5620_0e7b,
                    0x4064_ebfc_4699_1d4e,
                ],
                [
                    0x3fef_fc65_f1fd_571b,
                    0x3feb_e6f2_777b_142f,
                    0x3fe6_3b29_f5c1_8b6e,
                    0x3fdb_a608_7cb5_a207,
                    0,
                ],
            ),
        ];
        for (shift, t0, s0, t2, s2) in golden {
            let mut cfg = tiny().scheduler;
            cfg.time_shift_type = shift;
            let sched = PyramidSchedule::new(&cfg);
            let (mu01, mu2) = (sched.mu(9 * 12 * 20 / 4), sched.mu(9 * 24 * 40 / 4));
            assert_eq!(
                (mu01.to_bits(), mu2.to_bits()),
                (0x3fe1_89d0_369d_036a, 0x3fea_5036_9d03_69d0),
                "μ changed: {mu01}, {mu2}"
            );
            let first = sched.stage(0, 2, mu01, false);
            assert_eq!(
                bits(&first.timesteps),
                t0,
                "{shift:?} stage 0 timesteps: {:?}",
                first.timesteps
            );
            assert_eq!(
                bits(&first.sigmas),
                s0,
                "{shift:?} stage 0 sigmas: {:?}",
                first.sigmas
            );
            let last = sched.stage(2, 2, mu2, true);
            assert_eq!(
                bits(&last.timesteps),
                t2,
                "{shift:?} stage 2 timesteps: {:?}",
                last.timesteps
            );
            assert_eq!(
                bits(&last.sigmas),
                s2,
                "{shift:?} stage 2 sigmas: {:?}",
                last.sigmas
            );
        }
    }

    #[test]
    fn sigma_lookup_uses_nearest_timestep() {
        let sched = PyramidSchedule::new(&tiny().scheduler);
        let s = sched.stage(0, 2, sched.mu(540), true);
        for (i, t) in s.timesteps.iter().enumerate() {
            assert_eq!(s.sigma_for(*t as i64), s.sigmas[i], "step {i}");
        }
    }
}
