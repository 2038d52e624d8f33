//! The Helios-Distilled sampling loop for one chunk, generic over the networks.
//!
//! Per chunk (diffusers 0.42.1 `HeliosPyramidPipeline.__call__`, distilled branch):
//! history slice → full-res noise → downsample to stage 0 → for each stage: (upsample + block-noise
//! renoise) → DMD steps → chunk latents → history update → VAE decode. The networks sit behind
//! [`Denoiser`] and [`Decoder`], so tests can swap in fakes and the GPU path can bind device memory.

pub mod history;
pub mod noise;
pub mod pyramid;
pub mod schedule;

use ndarray::{Array3, Array5, Axis};

use crate::core::manifest::{DType, ModelManifest};
use crate::core::stream::ChunkTimings;
use crate::error::HeliosError;
use history::{HistoryRing, HistoryTerms};
use noise::{DrawKind, NoiseSource};
use schedule::{PyramidSchedule, StageSchedule};

/// Everything one transformer call needs.
#[derive(Debug)]
pub struct DenoiserInput<'a> {
    /// Pyramid stage (selects the graph).
    pub stage: usize,
    /// Current sample x_i in the transformer precision, `[1, C, 9, h_s, w_s]`.
    pub sample: &'a Array5<f32>,
    /// ⌊t_i⌋.
    pub timestep: i64,
    /// Prompt embedding `[1, S, D]`.
    pub text: &'a Array3<f32>,
    /// History terms in the transformer precision.
    pub history: &'a HistoryTerms,
}

/// The transformer: one forward returning the flow velocity.
pub trait Denoiser {
    /// Runs `HeliosTransformer3DModel.forward` for one sample.
    fn velocity(&mut self, input: &DenoiserInput<'_>) -> Result<Array5<f32>, HeliosError>;

    /// Networks that can run a whole chunk on their own device (the GPU device loop) return it here;
    /// the model then uses it instead of [`Sampler::sample_chunk`] + [`Decoder::decode`].
    fn chunk_runner(&mut self) -> Option<&mut dyn ChunkRunner> {
        None
    }
}

/// What a [`ChunkRunner`] hands back: views into its own host buffers, valid until its next call.
#[derive(Debug)]
pub struct RunnerOutput<'a> {
    /// The chunk's latents `[1, C, 9, h, w]` (as [`Sampler::sample_chunk`] returns them).
    pub latents: ndarray::ArrayView5<'a, f32>,
    /// The decoded frames, `[T, H, W, 4]` RGBA8 row-major (as [`video_to_rgba`] maps the video).
    pub rgba: &'a [u8],
    /// Where the time went.
    pub timings: ChunkTimings,
}

/// Runs one whole chunk (sampling and decode) and updates `history` exactly as
/// [`Sampler::sample_chunk`] does: the same draws from `noise` in the same order, the same anchor rule.
pub trait ChunkRunner {
    /// Samples and decodes chunk `chunk_index` of a stream whose history is `history`.
    fn run_chunk(
        &mut self,
        sampler: &Sampler,
        chunk_index: u64,
        text: &Array3<f32>,
        history: &mut HistoryRing,
        noise: &mut dyn NoiseSource,
    ) -> Result<RunnerOutput<'_>, HeliosError>;
}

/// The VAE decoder: normalised chunk latents `[1, C, 9, h, w]` to video `[1, 3, 33, H, W]` in [-1, 1].
pub trait Decoder {
    /// Decodes one chunk.
    fn decode(&mut self, latents: &Array5<f32>) -> Result<Array5<f32>, HeliosError>;
}

/// Receives named intermediate tensors (parity tests, debugging). Names follow the fixture keys,
/// e.g. `chunk0.stage1.step0.velocity`.
pub trait SamplerObserver {
    /// Called with each intermediate tensor.
    fn tensor(&mut self, _name: &str, _value: &Array5<f32>) {}
    /// Called with each truncated timestep.
    fn timestep(&mut self, _name: &str, _value: i64) {}
    /// Called with each stage schedule.
    fn schedule(&mut self, _name: &str, _timesteps: &[f64], _sigmas: &[f64], _mu: f64) {}
    /// Whether tensors should be produced at all (a device-resident loop skips the copies if not).
    fn wants_tensors(&self) -> bool {
        true
    }
}

/// An observer that ignores everything.
pub struct NoObserver;
impl SamplerObserver for NoObserver {
    fn wants_tensors(&self) -> bool {
        false
    }
}

/// Options of the loop that are a product choice rather than a model fact.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerOptions {
    /// Double the steps of the first chunk, as the reference does (`is_amplify_first_chunk`).
    /// Off = "fast start": about half the time to the first frame, at some quality cost.
    pub amplify_first_chunk: bool,
}

/// Model facts the loop needs, taken from the manifest once.
#[derive(Clone, Debug)]
pub struct Sampler {
    schedule: PyramidSchedule,
    steps: Vec<usize>,
    precision: DType,
    channels: usize,
    frames: usize,
    hw: (usize, usize),
    cholesky: Vec<Vec<f32>>,
    patch_tokens_div: usize,
    options: SamplerOptions,
}

impl Sampler {
    /// Builds the loop for a model.
    pub fn new(manifest: &ModelManifest, options: SamplerOptions) -> Self {
        Self {
            schedule: PyramidSchedule::new(&manifest.scheduler),
            steps: manifest.pyramid_steps.clone(),
            precision: manifest.precision,
            channels: manifest.latent_channels,
            frames: manifest.latent_frames_per_chunk,
            hw: manifest.latent_hw(),
            cholesky: manifest.block_noise_cholesky.clone(),
            // patch (1, 2, 2): tokens = T·H·W / 4
            patch_tokens_div: 4,
            options,
        }
    }

    /// The options in force.
    pub fn options(&self) -> &SamplerOptions {
        &self.options
    }

    /// Changes the options (takes effect on the next chunk).
    pub fn set_options(&mut self, options: SamplerOptions) {
        self.options = options;
    }

    /// Transformer calls a chunk costs.
    pub fn forwards_per_chunk(&self, first: bool) -> usize {
        let n: usize = self.steps.iter().sum();
        if first && self.options.amplify_first_chunk {
            2 * n
        } else {
            n
        }
    }

    /// Whether chunk `chunk_index` runs with doubled steps (the first chunk, when amplification is on).
    pub fn amplifies(&self, chunk_index: u64) -> bool {
        chunk_index == 0 && self.options.amplify_first_chunk
    }

    /// The schedule of every stage of a chunk, with μ from the token count before each stage's
    /// upsample as [`Self::sample_chunk`] computes it (stage 0 uses its own grid).
    pub fn stage_schedules(&self, amplify: bool) -> Vec<StageSchedule> {
        let (h, w) = self.hw;
        let stages = self.schedule.stages();
        (0..stages)
            .map(|stage| {
                // the latents entering `stage` are on the previous stage's grid (stage 0: its own)
                let down = 1usize << (stages - 1 - stage.saturating_sub(1));
                let tokens = self.frames * (h / down) * (w / down) / self.patch_tokens_div;
                let mu = self.schedule.mu(tokens);
                self.schedule.stage(stage, self.steps[stage], mu, amplify)
            })
            .collect()
    }

    /// Latent channels, frames per chunk and the full latent grid `(C, F, h, w)`.
    pub fn latent_dims(&self) -> (usize, usize, usize, usize) {
        (self.channels, self.frames, self.hw.0, self.hw.1)
    }

    /// Generates the latents of one chunk and pushes them into `history`.
    ///
    /// `chunk_index` 0 is the first chunk (amplified; captures the anchor when none is set).
    pub fn sample_chunk(
        &self,
        chunk_index: u64,
        text: &Array3<f32>,
        history: &mut HistoryRing,
        denoiser: &mut dyn Denoiser,
        noise: &mut dyn NoiseSource,
        observer: &mut dyn SamplerObserver,
    ) -> Result<Array5<f32>, HeliosError> {
        let p = self.precision;
        let k = chunk_index;
        let stages = self.schedule.stages();
        let first = chunk_index == 0;
        let amplify = first && self.options.amplify_first_chunk;

        // History as fed to the model (`.to(transformer_dtype)`).
        let mut terms = history.terms();
        for t in [&mut terms.short, &mut terms.mid, &mut terms.long] {
            pyramid::round_to(p, t);
        }
        observer.tensor(&format!("chunk{k}.history.short"), &terms.short);
        observer.tensor(&format!("chunk{k}.history.mid"), &terms.mid);
        observer.tensor(&format!("chunk{k}.history.long"), &terms.long);

        // Draw #1: full-resolution noise, then the stage-0 start point.
        let (h, w) = self.hw;
        let full = (1, self.channels, self.frames, h, w);
        let mut eps = Array5::<f32>::zeros(full);
        noise.fill(
            DrawKind::LatentNoise,
            eps.as_slice_mut().expect("fresh arrays are contiguous"),
        )?;
        let mut start = pyramid::downsample_start(&eps, stages - 1);
        observer.tensor(&format!("chunk{k}.stage0.start"), &start);
        // Stage 0's start is f32 in the reference (`prepare_latents(dtype=float32)`).
        let mut start_precision = DType::F32;
        let mut latents = start.clone();

        for stage in 0..stages {
            let prefix = format!("chunk{k}.stage{stage}");
            // μ from the token count before this stage's upsample (a reference quirk).
            let (_, _, t, sh, sw) = latents.dim();
            let mu = self.schedule.mu(t * sh * sw / self.patch_tokens_div);
            let sched = self.schedule.stage(stage, self.steps[stage], mu, amplify);
            observer.schedule(&prefix, &sched.timesteps, &sched.sigmas, mu);

            if stage > 0 {
                let up = pyramid::upsample_nearest(&latents);
                observer.tensor(&format!("{prefix}.upsampled"), &up);
                let (b, c, t, hh, ww) = up.dim();
                let mut z = vec![0f32; b * c * t * (hh / 2) * (ww / 2) * 4];
                noise.fill(DrawKind::BlockNoise { stage }, &mut z)?;
                let mut block = pyramid::block_noise(&z, &self.cholesky, up.dim());
                pyramid::round_to(p, &mut block);
                observer.tensor(&format!("{prefix}.block_noise"), &block);
                let (alpha, beta) = self.schedule.renoise(stage);
                start = pyramid::renoise(&up, &block, alpha, beta, p);
                start_precision = p;
                observer.tensor(&format!("{prefix}.start"), &start);
                latents = start.clone();
            }

            let n = sched.steps();
            for i in 0..n {
                let step = format!("{prefix}.step{i}");
                let timestep = sched.timesteps[i] as i64;
                let mut sample = latents.clone();
                pyramid::round_to(p, &mut sample);
                observer.tensor(&format!("{step}.sample"), &sample);
                observer.timestep(&format!("{step}.timestep"), timestep);
                let velocity = denoiser.velocity(&DenoiserInput {
                    stage,
                    sample: &sample,
                    timestep,
                    text,
                    history: &terms,
                })?;
                if velocity.dim() != sample.dim() {
                    return Err(HeliosError::ShapeMismatch {
                        what: format!("velocity of stage {stage}"),
                        expected: sample.shape().to_vec(),
                        actual: velocity.shape().to_vec(),
                    });
                }
                let bad = pyramid::count_non_finite(&velocity);
                if bad > 0 {
                    return Err(HeliosError::NonFinite {
                        graph: crate::core::manifest::ModelManifest::denoiser_key(stage),
                        count: bad,
                    });
                }
                observer.tensor(&format!("{step}.velocity"), &velocity);
                // `step` converts with the scheduler's σ for ⌊t_i⌋ and the next step's ⌊t_{i+1}⌋.
                let sigma = sched.sigma_for(timestep);
                let sigma_next =
                    (i + 1 < n).then(|| sched.sigma_for(sched.timesteps[i + 1] as i64));
                // The reference steps on `latents` (not the cast input): identical values in f32.
                let (x0, next) = pyramid::dmd_step(
                    &latents,
                    &velocity,
                    &start,
                    sigma,
                    sigma_next,
                    p,
                    start_precision,
                );
                observer.tensor(&format!("{step}.x0"), &x0);
                latents = match next {
                    Some(next) => {
                        observer.tensor(&format!("{step}.next"), &next);
                        next
                    }
                    None => x0,
                };
            }
        }

        observer.tensor(&format!("chunk{k}.result"), &latents);
        if first && !history.has_anchor() {
            let anchor = latents.index_axis(Axis(0), 0);
            history.set_anchor(anchor.slice(ndarray::s![.., 0..1, .., ..]))?;
        }
        history.push(latents.index_axis(Axis(0), 0))?;
        Ok(latents)
    }
}

/// Video `[1, 3, T, H, W]` in [-1, 1] to RGBA8 frames (diffusers `postprocess_video` + `numpy_to_pil`:
/// `round(255·clamp(x/2 + ½, 0, 1))`).
pub fn video_to_rgba(video: &Array5<f32>) -> Vec<Vec<u8>> {
    let (_, _, t, h, w) = video.dim();
    let plane = h * w;
    let standard = video.as_standard_layout();
    let data = standard.as_slice().expect("standard layout is contiguous");
    let to_u8 = |v: f32| ((v * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0).round_ties_even() as u8;
    (0..t)
        .map(|f| {
            // channel c of frame f is the contiguous plane (c·T + f)·H·W
            let [r, g, b] = [0, 1, 2].map(|c| &data[(c * t + f) * plane..(c * t + f + 1) * plane]);
            let mut out = vec![255u8; plane * 4];
            for (i, px) in out.chunks_exact_mut(4).enumerate() {
                px[0] = to_u8(r[i]);
                px[1] = to_u8(g[i]);
                px[2] = to_u8(b[i]);
            }
            out
        })
        .collect()
}
