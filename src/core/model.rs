//! [`HeliosModel`]: a loaded model (manifest, embedding bank, optional text encoder, networks) that turns
//! a stream's state into decoded chunks, one call per chunk.

use std::path::Path;
use std::time::Instant;

use ndarray::{Array5, Axis, s};

use crate::core::embedding::{EmbeddingBank, PromptCrossfade, PromptWeights};
use crate::core::manifest::ModelManifest;
use crate::core::runtime::session::check_file;
use crate::core::runtime::{OrtModel, ProviderReport, RuntimeConfig};
use crate::core::sampler::history::HistoryRing;
use crate::core::sampler::noise::{DrawKind, NoiseSource, SeededNoise};
use crate::core::sampler::{
    Decoder, Denoiser, NoObserver, Sampler, SamplerObserver, SamplerOptions, video_to_rgba,
};
use crate::core::stream::{Chunk, ChunkTimings, GenerationState, StreamConfig};
use crate::core::text::{PromptResolver, TextEncoder, check_prompt};
use crate::error::{HeliosError, echo};

/// I2V noise ranges: the pipeline's `image_noise_sigma_min/max` and `video_noise_sigma_min/max` defaults.
const IMAGE_NOISE_SIGMA: (f32, f32) = (0.111, 0.135);
const VIDEO_NOISE_SIGMA: (f32, f32) = (0.111, 0.135);

/// A model ready to generate: networks `N` (ort sessions by default, fakes in tests) plus the
/// manifest, the embedding bank, the text encoder if the model has one, and the sampling loop.
///
/// Prompt keys are bank names; with a text encoder any other key is embedded as free text
/// (`PromptWeights::one("a snowy forest at night")`, also blended with bank names).
pub struct HeliosModel<N = OrtModel> {
    manifest: ModelManifest,
    bank: EmbeddingBank,
    text: Option<TextEncoder>,
    sampler: Sampler,
    nets: N,
    /// [`ModelManifest::model_hash`], stamped on new streams and checked on saved ones.
    model_hash: String,
}

impl HeliosModel<OrtModel> {
    /// Loads `dir` (manifest, hashes, bank, text encoder if any, every graph) on the first provider of
    /// `config` that works. The text encoder always runs on the CPU.
    pub fn load(dir: impl AsRef<Path>, config: &RuntimeConfig) -> Result<Self, HeliosError> {
        let dir = dir.as_ref();
        let manifest = ModelManifest::load(dir)?;
        let bank_path = dir.join(&manifest.embeddings.file);
        check_file(
            &bank_path,
            &manifest.embeddings.sha256,
            config.verify_hashes,
        )?;
        let bank = EmbeddingBank::load(
            &bank_path,
            manifest.embeddings.seq_len,
            manifest.embeddings.dim,
        )?;
        let text = match &manifest.text_encoder {
            Some(spec) => Some(TextEncoder::from_manifest(
                dir,
                spec,
                config.verify_hashes,
                config.intra_threads,
            )?),
            None => None,
        };
        let nets = OrtModel::load(dir, &manifest, config)?;
        let model = Self::with_networks(manifest, bank, nets);
        match text {
            Some(text) => model.with_text_encoder(text),
            None => Ok(model),
        }
    }

    /// Which execution provider runs the model.
    pub fn provider(&self) -> &ProviderReport {
        self.nets.provider()
    }

    /// Image-to-video: conditions a stream on an RGBA8 image (any size; resized to the model's).
    ///
    /// As the reference I2V path: the image's latent becomes the anchor of every chunk and, on a stream
    /// that has not started, the last frame of a 33-frame still clip's latents becomes the newest
    /// history frame; both are lightly noised (σ ~ U(0.111, 0.135)). On a running stream only the anchor
    /// changes, which steers later chunks towards the image.
    pub fn condition_on_image(
        &mut self,
        state: &mut GenerationState,
        rgba: &[u8],
        width: u32,
        height: u32,
    ) -> Result<(), HeliosError> {
        let mut noise = state.noise.clone();
        self.condition_on_image_with(state, rgba, width, height, &mut noise)?;
        state.noise = noise;
        Ok(())
    }

    /// [`Self::condition_on_image`] with an explicit noise source (parity tests inject draws).
    pub fn condition_on_image_with(
        &mut self,
        state: &mut GenerationState,
        rgba: &[u8],
        width: u32,
        height: u32,
        noise: &mut dyn NoiseSource,
    ) -> Result<(), HeliosError> {
        self.check_state(state)?;
        if !self.nets.has_encoder() {
            return Err(HeliosError::Unsupported {
                what: format!(
                    "image conditioning: model `{}` has no VAE encoder graphs",
                    self.manifest.name
                ),
            });
        }
        let frame = image_to_video(
            rgba,
            width,
            height,
            self.manifest.width as u32,
            self.manifest.height as u32,
        )?;
        let c = self.manifest.latent_channels;
        let (h, w) = self.manifest.latent_hw();
        let (mean, logvar) = self.nets.encode(&frame)?;
        let image_latents = self.posterior_normalised(&mean, &logvar, noise)?;
        let clip_frames = self.manifest.frames_per_chunk();
        let clip = frame
            .broadcast((1, 3, clip_frames, frame.dim().3, frame.dim().4))
            .ok_or_else(|| HeliosError::internal("broadcasting the image to a clip"))?
            .to_owned();
        let (cmean, clogvar) = self.nets.encode(&clip)?;
        let clip_latents = self.posterior_normalised(&cmean, &clogvar, noise)?;
        let fake = clip_latents.slice(s![.., .., -1.., .., ..]).to_owned();
        let image_latents = noised(image_latents, IMAGE_NOISE_SIGMA, noise)?;
        let fake = noised(fake, VIDEO_NOISE_SIGMA, noise)?;
        let mut next = state.clone();
        next.history
            .set_anchor(image_latents.index_axis(Axis(0), 0))?;
        if next.chunk_index == 0 {
            next.history.set_newest(fake.index_axis(Axis(0), 0))?;
        }
        debug_assert_eq!(image_latents.dim(), (1, c, 1, h, w));
        *state = next;
        Ok(())
    }

    /// Posterior sample `mean + exp(½·clamp(logvar, −30, 20))·ε`, normalised `(z − mean)·(1/std)`.
    fn posterior_normalised(
        &self,
        mean: &Array5<f32>,
        logvar: &Array5<f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<Array5<f32>, HeliosError> {
        let mut eps = Array5::<f32>::zeros(mean.raw_dim());
        noise.fill(DrawKind::Posterior, eps.as_slice_mut().expect("contiguous"))?;
        let mut z = mean.clone();
        ndarray::Zip::from(&mut z)
            .and(logvar)
            .and(&eps)
            .for_each(|z, &lv, &e| {
                // libm, not std: std's exp calls the platform libm, whose last bits differ between
                // platforms; libm is a portable Rust port of musl's.
                *z += libm::expf(0.5 * lv.clamp(-30.0, 20.0)) * e;
            });
        for (ci, mut ch) in z.axis_iter_mut(Axis(1)).enumerate() {
            let (m, inv_std) = (
                self.manifest.latents_mean[ci],
                1.0 / self.manifest.latents_std[ci],
            );
            ch.mapv_inplace(|v| (v - m) * inv_std);
        }
        Ok(z)
    }
}

/// `σ·ε + (1 − σ)·x` with σ ~ U(range) (one uniform draw, then the normals).
fn noised(
    x: Array5<f32>,
    range: (f32, f32),
    noise: &mut dyn NoiseSource,
) -> Result<Array5<f32>, HeliosError> {
    let mut u = [0f32];
    noise.fill(DrawKind::Uniform, &mut u)?;
    let sigma = u[0] * (range.1 - range.0) + range.0;
    let mut eps = Array5::<f32>::zeros(x.raw_dim());
    noise.fill(
        DrawKind::ConditioningNoise,
        eps.as_slice_mut().expect("contiguous"),
    )?;
    Ok(&eps * sigma + &x * (1.0 - sigma))
}

/// RGBA8 → `[1, 3, 1, H, W]` in [-1, 1], resized to the model's size.
pub fn image_to_video(
    rgba: &[u8],
    width: u32,
    height: u32,
    to_width: u32,
    to_height: u32,
) -> Result<Array5<f32>, HeliosError> {
    let img = image::RgbaImage::from_raw(width, height, rgba.to_vec()).ok_or_else(|| {
        HeliosError::ShapeMismatch {
            what: "RGBA image bytes".into(),
            expected: vec![height as usize, width as usize, 4],
            actual: vec![rgba.len()],
        }
    })?;
    let img = if (width, height) == (to_width, to_height) {
        img
    } else {
        image::imageops::resize(
            &img,
            to_width,
            to_height,
            image::imageops::FilterType::Lanczos3,
        )
    };
    let (w, h) = (to_width as usize, to_height as usize);
    Ok(Array5::from_shape_fn((1, 3, 1, h, w), |(_, c, _, y, x)| {
        img.get_pixel(x as u32, y as u32)[c] as f32 / 127.5 - 1.0
    }))
}

impl<N: Denoiser + Decoder> HeliosModel<N> {
    /// Assembles a model from parts (tests use fake networks). `manifest` should have passed
    /// [`ModelManifest::validate`] ([`ModelManifest::load`] does that); its sizes are trusted here.
    pub fn with_networks(manifest: ModelManifest, bank: EmbeddingBank, nets: N) -> Self {
        let sampler = Sampler::new(
            &manifest,
            SamplerOptions {
                amplify_first_chunk: manifest.amplify_first_chunk,
            },
        );
        Self {
            model_hash: manifest.model_hash(),
            manifest,
            bank,
            text: None,
            sampler,
            nets,
        }
    }

    /// The manifest.
    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    /// Adds a text encoder for free-text prompts. Its embedding is the model's prompt, so the bank must
    /// be one token (`seq_len` 1) of the encoder's width, else [`HeliosError::ManifestMismatch`].
    pub fn with_text_encoder(mut self, text: TextEncoder) -> Result<Self, HeliosError> {
        let (seq_len, dim) = self.bank.shape();
        let (want_seq, want_dim) = (
            self.manifest.embeddings.seq_len,
            self.manifest.embeddings.dim,
        );
        if seq_len != 1 || want_seq != 1 || dim != text.dim() || want_dim != text.dim() {
            return Err(HeliosError::ManifestMismatch {
                graph: crate::core::graph_contract::key::TEXT_ENCODER.into(),
                reason: format!(
                    "the encoder gives [1, {}] embeddings but the model's prompts are \
                     [{want_seq}, {want_dim}] (embeddings.seq_len must be 1 and dim the encoder's width)",
                    text.dim()
                ),
            });
        }
        self.text = Some(text);
        Ok(self)
    }

    /// The prompt bank.
    pub fn bank(&self) -> &EmbeddingBank {
        &self.bank
    }

    /// The text encoder, when the model takes free-text prompts.
    pub fn text_encoder(&self) -> Option<&TextEncoder> {
        self.text.as_ref()
    }

    /// Checks prompt weights: finite, not negative, positive total ([`HeliosError::InvalidWeights`]), and
    /// every key a bank name or, with a text encoder, non-empty text ([`HeliosError::UnknownPrompt`] /
    /// [`HeliosError::EmptyPrompt`] otherwise). Cheap: free text is embedded when a chunk needs it.
    pub fn check_prompt(&self, weights: &PromptWeights) -> Result<(), HeliosError> {
        check_prompt(&self.bank, self.text.as_ref(), weights)
    }

    /// The `[1, S, D]` embedding of prompt weights (bank names and, with a text encoder, free text).
    pub fn embed_prompt(
        &mut self,
        weights: &PromptWeights,
    ) -> Result<ndarray::Array3<f32>, HeliosError> {
        crate::core::embedding::blend(
            &mut PromptResolver::new(&self.bank, self.text.as_mut()),
            weights,
        )
    }

    /// The networks.
    pub fn networks_mut(&mut self) -> &mut N {
        &mut self.nets
    }

    /// The sampling loop (schedules, options).
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// Sampler options (e.g. fast start).
    pub fn sampler_options(&self) -> &SamplerOptions {
        self.sampler.options()
    }

    /// Changes sampler options.
    pub fn set_sampler_options(&mut self, options: SamplerOptions) {
        self.sampler.set_options(options);
    }

    /// A fresh stream: zero history, RNG at `seed`, prompt checked ([`Self::check_prompt`]).
    pub fn new_stream(&self, config: &StreamConfig) -> Result<GenerationState, HeliosError> {
        self.check_prompt(&config.prompt)?;
        let (h, w) = self.manifest.latent_hw();
        Ok(GenerationState {
            model: self.manifest.name.clone(),
            model_hash: self.model_hash.clone(),
            seed: config.seed,
            chunk_index: 0,
            noise: SeededNoise::new(config.seed),
            history: HistoryRing::try_new(
                self.history_sizes(),
                self.manifest.latent_channels,
                h,
                w,
            )?,
            prompt: PromptCrossfade::new(config.prompt.clone(), config.crossfade_chunks),
        })
    }

    /// `[long, mid, 1]` of the manifest (validated to have three entries).
    fn history_sizes(&self) -> [usize; 3] {
        let s = &self.manifest.history_sizes;
        [s[0], s[1], s[2]]
    }

    /// This model's name and hash as errors show them.
    fn identity(&self) -> String {
        format!("`{}` ({})", self.manifest.name, self.model_hash)
    }

    /// Checks that `state` belongs to this model and that everything the sampler indexes with is in
    /// range: model name and hash ([`HeliosError::StateModelMismatch`]), history layout and head, anchor,
    /// generator, chunk index and prompt crossfade ([`HeliosError::StateInvalid`] naming the field). Cheap
    /// (no pass over the latents); every chunk runs it.
    pub fn check_state(&self, state: &GenerationState) -> Result<(), HeliosError> {
        let hash_differs = !state.model_hash.is_empty() && state.model_hash != self.model_hash;
        if state.model != self.manifest.name || hash_differs {
            return Err(HeliosError::StateModelMismatch {
                expected: self.identity(),
                found: format!(
                    "`{}` ({})",
                    echo(&state.model),
                    if state.model_hash.is_empty() {
                        "no hash"
                    } else {
                        &state.model_hash
                    }
                ),
            });
        }
        if state.chunk_index == u64::MAX {
            return Err(HeliosError::state(
                "chunk_index",
                "the stream is at the last chunk index",
            ));
        }
        let (h, w) = self.manifest.latent_hw();
        state
            .history
            .check_layout(self.history_sizes(), self.manifest.latent_channels, h, w)?;
        state.noise.check()?;
        state.prompt.validate()
    }

    /// Restores a saved state: [`Self::check_state`], every history value finite, and every prompt name
    /// known to this model. A state saved before model hashes existed is checked by name only.
    pub fn restore(&self, ron_text: &str) -> Result<GenerationState, HeliosError> {
        let state = GenerationState::from_ron(ron_text)?;
        self.check_state(&state)?;
        state.history.check_values()?;
        self.check_prompt(&state.prompt.target)?;
        if let Some(from) = &state.prompt.from {
            self.check_prompt(from)?;
        }
        Ok(state)
    }

    /// Generates and decodes the next chunk of `state`, advancing it only on success.
    pub fn next_chunk(&mut self, state: &mut GenerationState) -> Result<Chunk, HeliosError> {
        let mut next = state.clone();
        let mut noise = next.noise.clone();
        let chunk = self.next_chunk_with(&mut next, &mut noise, &mut NoObserver)?;
        next.noise = noise;
        *state = next;
        Ok(chunk)
    }

    /// [`Self::next_chunk`] with an explicit noise source and an observer of intermediate tensors.
    /// On error `state` may be partly advanced; callers that care pass a clone.
    pub fn next_chunk_with(
        &mut self,
        state: &mut GenerationState,
        noise: &mut dyn NoiseSource,
        observer: &mut dyn SamplerObserver,
    ) -> Result<Chunk, HeliosError> {
        self.check_state(state)?;
        let next_index = state
            .chunk_index
            .checked_add(1)
            .ok_or_else(|| HeliosError::state("chunk_index", "at its limit"))?;
        let (weights, text) = state
            .prompt
            .next_embedding_from(&mut PromptResolver::new(&self.bank, self.text.as_mut()))?;
        let index = state.chunk_index;
        let t0 = Instant::now();
        let _span = tracing::debug_span!("helios_chunk", index).entered();
        let (frames, timings) = if let Some(runner) = self.nets.chunk_runner() {
            // Device-resident loop: sampling and decode in one call, RGBA8 frames back.
            let out = runner.run_chunk(&self.sampler, index, &text, &mut state.history, noise)?;
            if observer.wants_tensors() {
                observer.tensor(&format!("chunk{index}.result"), &out.latents.to_owned());
            }
            let plane = self.manifest.height * self.manifest.width * 4;
            if out.rgba.len() != plane * self.manifest.frames_per_chunk() {
                return Err(HeliosError::ShapeMismatch {
                    what: "decoded RGBA frames".into(),
                    expected: vec![
                        self.manifest.frames_per_chunk(),
                        self.manifest.height,
                        self.manifest.width,
                        4,
                    ],
                    actual: vec![out.rgba.len()],
                });
            }
            let frames = out.rgba.chunks_exact(plane).map(<[u8]>::to_vec).collect();
            (frames, out.timings)
        } else {
            self.host_chunk(index, &text, state, noise, observer, t0)?
        };
        state.chunk_index = next_index;
        Ok(Chunk {
            index,
            width: self.manifest.width as u32,
            height: self.manifest.height as u32,
            frames,
            prompt: weights,
            timings,
        })
    }

    /// The host loop: [`Sampler::sample_chunk`], then the decoder, then [`video_to_rgba`].
    fn host_chunk(
        &mut self,
        index: u64,
        text: &ndarray::Array3<f32>,
        state: &mut GenerationState,
        noise: &mut dyn NoiseSource,
        observer: &mut dyn SamplerObserver,
        t0: Instant,
    ) -> Result<(Vec<Vec<u8>>, ChunkTimings), HeliosError> {
        let latents = self.sampler.sample_chunk(
            index,
            text,
            &mut state.history,
            &mut self.nets,
            noise,
            observer,
        )?;
        let t1 = Instant::now();
        let video = self.nets.decode(&latents)?;
        let want = [
            1,
            3,
            self.manifest.frames_per_chunk(),
            self.manifest.height,
            self.manifest.width,
        ];
        if video.shape() != want {
            return Err(HeliosError::ShapeMismatch {
                what: "decoded video".into(),
                expected: want.to_vec(),
                actual: video.shape().to_vec(),
            });
        }
        observer.tensor(&format!("chunk{index}.video"), &video);
        let frames = video_to_rgba(&video);
        let timings = ChunkTimings {
            denoise_s: (t1 - t0).as_secs_f64(),
            decode_s: t1.elapsed().as_secs_f64(),
        };
        Ok((frames, timings))
    }
}
