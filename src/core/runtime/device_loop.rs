//! The device-resident chunk loop: [`Sampler::sample_chunk`] plus the VAE decode with every tensor in the
//! provider's memory, driven through IoBinding.
//!
//! Per chunk the host only draws the noise (our [`NoiseSource`], in the reference's draw order) and uploads
//! it, and downloads the RGBA8 frames and the chunk latents. The prompt embedding goes up only when it
//! changes; the history ring and its anchor go up only when the stream is not the one already on the device.
//! Everything else stays in device memory across stages and chunks:
//!
//! ```text
//! ε ──pyramid_downsample──▶ start₀ ─┬─▶ denoiser_stage0 ─▶ v₀ ─▶ dmd_step_stage0 ─▶ (next ⇄ ping-pong) … x0₀
//! history ─history_slices─▶ short/mid/long ─┘          (timesteps and σ: uploaded once, one tensor per step)
//! x0₀, z₁ ─pyramid_renoise_stage1─▶ start₁ ─▶ … stage 1, stage 2 … ─▶ x0₂ ─┬─ history_push ─▶ history′ (ping-pong)
//!                                                                        └─ vae_decoder_rgba8 ─▶ RGBA8 ─▶ host
//! ```
//!
//! Every run has its [`IoBinding`] built once, when the loop is created: inputs and outputs are fixed
//! buffers, so the hot loop only calls `run_binding` (and CUDA graphs see fixed addresses). Buffers that
//! connect two graphs must agree in shape and dtype in the manifest; that is checked on creation, so f32
//! graphs (helios-tiny) and bf16 graphs (the GPU export) run through the same code.
//!
//! The chunk latents come down too (`[1, 16, 9, h, w]`, 2.2 MB in f32 at 384×640 against 32 MB of
//! frames): the host [`HistoryRing`] in the stream's state is updated exactly as the host loop does, so
//! saving, restoring and interleaving streams keep working, and the device copy is re-uploaded only
//! when the state handed in differs from what is on the device.

use std::time::Instant;

use ndarray::{Array3, ArrayView5, Axis, s};
use ort::session::{IoBinding, RunOptions};
use ort::value::DynTensor;

use super::binding::{Copier, DeviceMemory, HostTensor, Transfer, ort_err};
use super::provider::Provider;
use super::session::GraphSession;
use crate::core::graph_contract::{key, port};
use crate::core::manifest::{DType, ModelManifest, TensorSpec};
use crate::core::sampler::history::HistoryRing;
use crate::core::sampler::noise::{DrawKind, NoiseSource};
use crate::core::sampler::{RunnerOutput, Sampler, SamplerOptions};
use crate::core::stream::ChunkTimings;
use crate::error::HeliosError;

/// The graphs the device loop needs beyond the denoisers, for a model's stage count.
pub fn required_graphs(manifest: &ModelManifest) -> Vec<String> {
    let stages = manifest.scheduler.stages;
    let mut keys = vec![key::PYRAMID_DOWNSAMPLE.to_string()];
    keys.extend((1..stages).map(key::pyramid_renoise));
    keys.extend((0..stages).map(key::dmd_step));
    keys.extend(
        [
            key::HISTORY_PUSH,
            key::HISTORY_SLICES,
            key::VAE_DECODER_RGBA8,
        ]
        .map(String::from),
    );
    keys
}

/// The device-loop graphs a model lacks (empty: it can run the device loop).
pub fn missing_graphs(manifest: &ModelManifest) -> Vec<String> {
    required_graphs(manifest)
        .into_iter()
        .filter(|k| !manifest.graphs.contains_key(k))
        .collect()
}

/// Counters of what the loop did since it was created (the bench reports them per chunk).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceLoopStats {
    /// Chunks completed.
    pub chunks: u64,
    /// Graph runs.
    pub runs: u64,
    /// Host → device copies.
    pub uploads: u64,
    /// Device → host copies.
    pub downloads: u64,
    /// Device → device copies (the anchor, once per stream).
    pub device_copies: u64,
    /// Times the history ring went up because the stream on the device was another one.
    pub history_uploads: u64,
}

/// One prepared run: a binding and, for a session capturing CUDA graphs, the run options naming its graph.
struct Bound {
    binding: IoBinding,
    options: Option<RunOptions>,
}

impl Bound {
    fn run(
        &self,
        session: &mut GraphSession,
        stats: &mut DeviceLoopStats,
    ) -> Result<(), HeliosError> {
        let key = session.key.as_str();
        let result = match &self.options {
            Some(options) => session
                .session
                .run_binding_with_options(&self.binding, options),
            None => session.session.run_binding(&self.binding),
        };
        // The outputs are our own bound buffers; the returned handles are dropped at once.
        drop(result.map_err(ort_err(key))?);
        stats.runs += 1;
        Ok(())
    }
}

/// Builds the bindings of one session, numbering CUDA graphs when the session captures them.
struct Binder<'a> {
    session: &'a GraphSession,
    cuda_graph: bool,
    next_graph_id: u32,
}

impl<'a> Binder<'a> {
    fn new(session: &'a GraphSession, cuda_graph: bool) -> Self {
        Self {
            session,
            cuda_graph,
            // ONNX Runtime reserves id 0 for its own use and -1 for "no capture".
            next_graph_id: 1,
        }
    }

    fn bind(
        &mut self,
        inputs: &[(&str, &DynTensor)],
        outputs: &mut [(&str, &mut DynTensor)],
    ) -> Result<Bound, HeliosError> {
        let key = self.session.key.as_str();
        let mut binding = self
            .session
            .session
            .create_binding()
            .map_err(ort_err(key))?;
        for (name, value) in inputs {
            binding.bind_input(*name, *value).map_err(ort_err(key))?;
        }
        for (name, value) in outputs.iter_mut() {
            binding
                .bind_output(*name, &mut **value)
                .map_err(ort_err(key))?;
        }
        let options = if self.cuda_graph {
            // One captured graph per binding: ONNX Runtime keys them by this annotation.
            let mut options = RunOptions::new().map_err(ort_err(key))?;
            options
                .set("gpu_graph_id", self.next_graph_id.to_string())
                .map_err(ort_err(key))?;
            self.next_graph_id += 1;
            Some(options)
        } else {
            None
        };
        Ok(Bound { binding, options })
    }
}

/// Buffers that connect graphs, checked against every port that shares them.
struct Ports<'m> {
    manifest: &'m ModelManifest,
}

impl Ports<'_> {
    fn spec(&self, key: &str, name: &str, output: bool) -> Result<&TensorSpec, HeliosError> {
        let graph = self
            .manifest
            .graphs
            .get(key)
            .ok_or_else(|| HeliosError::ManifestMismatch {
                graph: key.into(),
                reason: "the device loop needs this graph".into(),
            })?;
        let side = if output {
            &graph.outputs
        } else {
            &graph.inputs
        };
        side.iter()
            .find(|t| t.name == name)
            .ok_or_else(|| HeliosError::ManifestMismatch {
                graph: key.into(),
                reason: format!(
                    "the device loop needs {} `{name}`",
                    if output { "output" } else { "input" }
                ),
            })
    }

    /// The spec every port of one buffer agrees on.
    fn agree(&self, ports: &[(&str, &str, bool)]) -> Result<TensorSpec, HeliosError> {
        let (k0, n0, o0) = ports[0];
        let first = self.spec(k0, n0, o0)?;
        for &(k, n, o) in &ports[1..] {
            let other = self.spec(k, n, o)?;
            if other.shape != first.shape || other.dtype != first.dtype {
                return Err(HeliosError::ManifestMismatch {
                    graph: k.into(),
                    reason: format!(
                        "`{k}.{n}` is {:?} {:?} but `{k0}.{n0}`, which shares its buffer in the device \
                         loop, is {:?} {:?}",
                        other.dtype, other.shape, first.dtype, first.shape
                    ),
                });
            }
        }
        Ok(first.clone())
    }

    /// Fails if a graph has an input the loop does not bind.
    fn only_inputs(&self, key: &str, known: &[&str]) -> Result<(), HeliosError> {
        let graph = &self.manifest.graphs[key];
        match graph
            .inputs
            .iter()
            .find(|t| !known.contains(&t.name.as_str()))
        {
            Some(t) => Err(HeliosError::ManifestMismatch {
                graph: key.into(),
                reason: format!("input `{}` is not part of the device-loop contract", t.name),
            }),
            None => Ok(()),
        }
    }

    fn expect_shape(
        &self,
        what: &str,
        spec: &TensorSpec,
        want: &[usize],
    ) -> Result<(), HeliosError> {
        if spec.shape != want {
            return Err(HeliosError::ShapeMismatch {
                what: format!("device-loop buffer {what} (`{}`)", spec.name),
                expected: want.to_vec(),
                actual: spec.shape.clone(),
            });
        }
        Ok(())
    }
}

/// The runs of one denoising step.
struct StepRuns {
    denoise: Bound,
    dmd: Bound,
}

/// Device buffers the host touches (the bindings hold the rest).
struct Buffers {
    eps: DynTensor,
    z: Vec<DynTensor>,
    text: DynTensor,
    history: [DynTensor; 2],
    anchor: DynTensor,
    first_frame: DynTensor,
    latents: DynTensor,
    rgba: DynTensor,
}

/// Host staging, allocated once.
struct Staging {
    eps: HostTensor,
    z: Vec<HostTensor>,
    text: HostTensor,
    history: HostTensor,
    anchor: HostTensor,
    latents: HostTensor,
    rgba: HostTensor,
}

/// The copies between host and device, each bound once.
struct Copies {
    copier: Copier,
    eps: Transfer,
    z: Vec<Transfer>,
    text: Transfer,
    /// Into history buffer 0 or 1.
    history: [Transfer; 2],
    anchor: Transfer,
    /// The first frame of a stream's first chunk into the anchor (device to device).
    capture_anchor: Transfer,
    latents: Transfer,
    rgba: Transfer,
}

/// The device-resident loop of one model (see the module docs). Created by [`super::OrtModel::load`]
/// when [`super::RuntimeConfig::device_loop`] selects it.
pub struct DeviceLoop {
    memory: DeviceMemory,
    downsample: GraphSession,
    renoise: Vec<GraphSession>,
    dmd: Vec<GraphSession>,
    push: GraphSession,
    slices: GraphSession,
    decode: GraphSession,
    run_downsample: Bound,
    run_renoise: Vec<Bound>,
    run_slices: [Bound; 2],
    run_push: [Bound; 2],
    /// `[amplified][stage][step]`.
    run_steps: [Vec<Vec<StepRuns>>; 2],
    run_decode: Bound,
    buffers: Buffers,
    staging: Staging,
    copies: Copies,
    /// Scalars uploaded once; kept here because the bindings refer to them.
    _scalars: Vec<DynTensor>,
    /// Stage buffers the bindings refer to.
    _stage_buffers: Vec<DynTensor>,
    latents: Vec<f32>,
    latent_dims: (usize, usize, usize, usize, usize),
    /// The prompt embedding on the device, if `text_valid`.
    text_host: Vec<f32>,
    text_valid: bool,
    /// What the device history holds, if `mirror_valid`.
    mirror: HistoryRing,
    mirror_valid: bool,
    /// Which of the two history buffers is current.
    parity: usize,
    stats: DeviceLoopStats,
    /// Seconds per stage of the last chunk.
    stage_seconds: Vec<f64>,
}

impl std::fmt::Debug for DeviceLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLoop")
            .field("memory", &self.memory)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl DeviceLoop {
    /// Opens the helper graphs with `open`, allocates every buffer in the provider's memory, uploads the
    /// schedule scalars of both first-chunk modes and builds every binding.
    pub(crate) fn new(
        manifest: &ModelManifest,
        provider: &Provider,
        denoisers: &[GraphSession],
        mut open: impl FnMut(&str) -> Result<GraphSession, HeliosError>,
        cuda_graph: impl Fn(&str) -> bool,
    ) -> Result<Self, HeliosError> {
        let missing = missing_graphs(manifest);
        if !missing.is_empty() {
            return Err(HeliosError::Unsupported {
                what: format!(
                    "the device loop on model `{}`, which lacks the graphs {}",
                    manifest.name,
                    missing.join(", ")
                ),
            });
        }
        let stages = manifest.scheduler.stages;
        if denoisers.len() != stages {
            return Err(HeliosError::internal(format!(
                "{} denoisers for {stages} stages",
                denoisers.len()
            )));
        }
        let p = Ports { manifest };
        let (c, f) = (manifest.latent_channels, manifest.latent_frames_per_chunk);
        let (h, w) = manifest.latent_hw();
        let hist_len = manifest.history_len();
        let den = key::denoiser;
        let dmd = key::dmd_step;
        let ren = key::pyramid_renoise;
        for s in 0..stages {
            p.only_inputs(&den(s), &port::DENOISER_INPUTS)?;
            p.only_inputs(&dmd(s), &port::DMD_STEP_INPUTS)?;
            if s > 0 {
                p.only_inputs(&ren(s), &[port::X0, port::Z])?;
            }
        }
        p.only_inputs(key::PYRAMID_DOWNSAMPLE, &[port::NOISE])?;
        p.only_inputs(key::HISTORY_PUSH, &[port::HISTORY, port::CHUNK])?;
        p.only_inputs(key::HISTORY_SLICES, &[port::HISTORY, port::ANCHOR])?;
        p.only_inputs(key::VAE_DECODER_RGBA8, &[port::LATENTS])?;

        // Buffer specs, each checked against every port that shares it.
        let eps_spec = p.agree(&[(key::PYRAMID_DOWNSAMPLE, port::NOISE, false)])?;
        p.expect_shape(port::NOISE, &eps_spec, &[1, c, f, h, w])?;
        let mut start_specs = Vec::new();
        let mut lat_specs = Vec::new();
        let mut vel_specs = Vec::new();
        let mut x0_specs = Vec::new();
        let mut z_specs = Vec::new();
        let last = stages - 1;
        for s in 0..stages {
            let (d, m) = (den(s), dmd(s));
            let (hs, ws) = manifest.stage_hw(s);
            let producer = if s == 0 {
                (key::PYRAMID_DOWNSAMPLE.to_string(), port::START)
            } else {
                (ren(s), port::START)
            };
            let spec = p.agree(&[
                (&producer.0, producer.1, true),
                (&m, port::START, false),
                (&m, port::SAMPLE, false),
                (&d, port::HIDDEN_STATES, false),
            ])?;
            p.expect_shape(&format!("start of stage {s}"), &spec, &[1, c, f, hs, ws])?;
            start_specs.push(spec);
            lat_specs.push(p.agree(&[
                (&m, port::NEXT, true),
                (&m, port::SAMPLE, false),
                (&d, port::HIDDEN_STATES, false),
            ])?);
            vel_specs.push(p.agree(&[(&d, port::VELOCITY, true), (&m, port::VELOCITY, false)])?);
            let mut x0_ports: Vec<(String, &str, bool)> = vec![(m.clone(), port::X0, true)];
            if s < last {
                x0_ports.push((ren(s + 1), port::X0, false));
            } else {
                x0_ports.push((key::HISTORY_PUSH.into(), port::CHUNK, false));
                x0_ports.push((key::VAE_DECODER_RGBA8.into(), port::LATENTS, false));
            }
            let refs: Vec<(&str, &str, bool)> = x0_ports
                .iter()
                .map(|(k, n, o)| (k.as_str(), *n, *o))
                .collect();
            x0_specs.push(p.agree(&refs)?);
            if s > 0 {
                let spec = p.agree(&[(&ren(s), port::Z, false)])?;
                p.expect_shape(
                    &format!("block noise of stage {s}"),
                    &spec,
                    &[c * f * (hs / 2) * (ws / 2), 4],
                )?;
                z_specs.push(spec);
            }
        }
        p.expect_shape("chunk latents", &x0_specs[last], &[1, c, f, h, w])?;
        let den_keys: Vec<String> = (0..stages).map(den).collect();
        let text_ports: Vec<(&str, &str, bool)> = den_keys
            .iter()
            .map(|k| (k.as_str(), port::ENCODER_HIDDEN_STATES, false))
            .collect();
        let text_spec = p.agree(&text_ports)?;
        let mut term_specs = Vec::new();
        // Each slice the history graph writes is read by every denoiser under its `latents_history_*` name.
        for (term, input, want) in [
            (port::SHORT, port::LATENTS_HISTORY_SHORT, 2),
            (
                port::MID,
                port::LATENTS_HISTORY_MID,
                manifest.history_sizes[1],
            ),
            (
                port::LONG,
                port::LATENTS_HISTORY_LONG,
                manifest.history_sizes[0],
            ),
        ] {
            let mut ports: Vec<(&str, &str, bool)> = vec![(key::HISTORY_SLICES, term, true)];
            ports.extend(den_keys.iter().map(|k| (k.as_str(), input, false)));
            let spec = p.agree(&ports)?;
            p.expect_shape(&format!("history {term}"), &spec, &[1, c, want, h, w])?;
            term_specs.push(spec);
        }
        let hist_spec = p.agree(&[
            (key::HISTORY_PUSH, port::HISTORY, false),
            (key::HISTORY_PUSH, port::HISTORY_NEXT, true),
            (key::HISTORY_SLICES, port::HISTORY, false),
        ])?;
        p.expect_shape(port::HISTORY, &hist_spec, &[1, c, hist_len, h, w])?;
        let anchor_spec = p.agree(&[
            (key::HISTORY_SLICES, port::ANCHOR, false),
            (key::HISTORY_PUSH, port::FIRST_FRAME, true),
        ])?;
        p.expect_shape(port::ANCHOR, &anchor_spec, &[1, c, 1, h, w])?;
        let rgba_spec = p.agree(&[(key::VAE_DECODER_RGBA8, port::RGBA, true)])?;
        let frames = manifest.frames_per_chunk();
        p.expect_shape(
            "frames",
            &rgba_spec,
            &[frames, manifest.height, manifest.width, 4],
        )?;
        if rgba_spec.dtype != DType::U8 {
            return Err(HeliosError::ManifestMismatch {
                graph: key::VAE_DECODER_RGBA8.into(),
                reason: format!("output `rgba` is {:?}, the loop reads U8", rgba_spec.dtype),
            });
        }

        // Sessions and memory.
        let downsample = open(key::PYRAMID_DOWNSAMPLE)?;
        let renoise = (1..stages)
            .map(|s| open(&ren(s)))
            .collect::<Result<Vec<_>, _>>()?;
        let dmd_sessions = (0..stages)
            .map(|s| open(&dmd(s)))
            .collect::<Result<Vec<_>, _>>()?;
        let push = open(key::HISTORY_PUSH)?;
        let slices = open(key::HISTORY_SLICES)?;
        let decode = open(key::VAE_DECODER_RGBA8)?;
        let memory = DeviceMemory::for_session(&denoisers[0].session, provider)?;
        let alloc = |spec: &TensorSpec| memory.tensor(spec);

        let mut buffers = Buffers {
            eps: alloc(&eps_spec)?,
            z: z_specs.iter().map(alloc).collect::<Result<_, _>>()?,
            text: alloc(&text_spec)?,
            history: [alloc(&hist_spec)?, alloc(&hist_spec)?],
            anchor: alloc(&anchor_spec)?,
            first_frame: alloc(&anchor_spec)?,
            latents: alloc(&x0_specs[last])?,
            rgba: alloc(&rgba_spec)?,
        };
        let mut starts: Vec<DynTensor> = start_specs.iter().map(alloc).collect::<Result<_, _>>()?;
        let mut lats: Vec<[DynTensor; 2]> = lat_specs
            .iter()
            .map(|sp| Ok([alloc(sp)?, alloc(sp)?]))
            .collect::<Result<_, HeliosError>>()?;
        let mut vels: Vec<DynTensor> = vel_specs.iter().map(alloc).collect::<Result<_, _>>()?;
        // The last stage's x0 is `buffers.latents`; the others get their own.
        let mut x0s: Vec<DynTensor> = x0_specs[..last]
            .iter()
            .map(alloc)
            .collect::<Result<_, _>>()?;
        let [mut short, mut mid, mut long] = [
            alloc(&term_specs[0])?,
            alloc(&term_specs[1])?,
            alloc(&term_specs[2])?,
        ];

        // Schedule scalars of both first-chunk modes, uploaded once.
        let sampler = Sampler::new(
            manifest,
            SamplerOptions {
                amplify_first_chunk: true,
            },
        );
        let mut scalars: Vec<DynTensor> = Vec::new();
        let mut copier = Copier::new(provider);
        // [amplified][stage][step] -> (timestep, sigma, sigma_next) indices into `scalars`
        let mut scalar_index: [Vec<Vec<(usize, usize, usize)>>; 2] = [Vec::new(), Vec::new()];
        for (v, amplify) in [false, true].into_iter().enumerate() {
            for (s, sched) in sampler.stage_schedules(amplify).iter().enumerate() {
                let ts_spec = p.spec(&den(s), port::TIMESTEP, false)?;
                let sig_spec = p.spec(&dmd(s), port::SIGMA, false)?;
                let sn_spec = p.spec(&dmd(s), port::SIGMA_NEXT, false)?;
                let mut ts_host = HostTensor::new(port::TIMESTEP, ts_spec)?;
                let mut sig_host = HostTensor::new(port::SIGMA, sig_spec)?;
                let mut sn_host = HostTensor::new(port::SIGMA_NEXT, sn_spec)?;
                let n = sched.steps();
                let mut per_step = Vec::with_capacity(n);
                for i in 0..n {
                    // As the host loop: the model gets ⌊t_i⌋, σ is looked up from it, and the next σ
                    // from ⌊t_{i+1}⌋ (unused after the last step, whose x0 is the result).
                    let t = sched.timesteps[i] as i64;
                    let sigma = sched.sigma_for(t);
                    let sigma_next = if i + 1 < n {
                        sched.sigma_for(sched.timesteps[i + 1] as i64)
                    } else {
                        0.0
                    };
                    let base = scalars.len();
                    for (host, spec, float, int) in [
                        (&mut ts_host, ts_spec, t as f64, t),
                        (&mut sig_host, sig_spec, sigma, 0),
                        (&mut sn_host, sn_spec, sigma_next, 0),
                    ] {
                        host.set_scalar(float, int)?;
                        let mut dev = alloc(spec)?;
                        let mut copy = copier.to_device("schedule upload", spec.dtype, &mut dev)?;
                        copier.upload(&mut copy, host)?;
                        scalars.push(dev);
                    }
                    per_step.push((base, base + 1, base + 2));
                }
                scalar_index[v].push(per_step);
            }
        }

        // Bindings.
        let mut b = Binder::new(&downsample, cuda_graph(key::PYRAMID_DOWNSAMPLE));
        let run_downsample = b.bind(
            &[(port::NOISE, &buffers.eps)],
            &mut [(port::START, &mut starts[0])],
        )?;
        let mut run_renoise = Vec::new();
        for s in 1..stages {
            let mut b = Binder::new(&renoise[s - 1], cuda_graph(&ren(s)));
            run_renoise.push(b.bind(
                &[(port::X0, &x0s[s - 1]), (port::Z, &buffers.z[s - 1])],
                &mut [(port::START, &mut starts[s])],
            )?);
        }
        let mut b = Binder::new(&slices, cuda_graph(key::HISTORY_SLICES));
        let mut slice_runs = Vec::new();
        for parity in 0..2 {
            slice_runs.push(b.bind(
                &[
                    (port::HISTORY, &buffers.history[parity]),
                    (port::ANCHOR, &buffers.anchor),
                ],
                &mut [
                    (port::SHORT, &mut short),
                    (port::MID, &mut mid),
                    (port::LONG, &mut long),
                ],
            )?);
        }
        let mut b = Binder::new(&push, cuda_graph(key::HISTORY_PUSH));
        let mut push_runs = Vec::new();
        for parity in 0..2 {
            let [h0, h1] = &mut buffers.history;
            let (from, to) = if parity == 0 { (&*h0, h1) } else { (&*h1, h0) };
            push_runs.push(b.bind(
                &[(port::HISTORY, from), (port::CHUNK, &buffers.latents)],
                &mut [
                    (port::HISTORY_NEXT, to),
                    (port::FIRST_FRAME, &mut buffers.first_frame),
                ],
            )?);
        }
        let mut den_binders: Vec<Binder<'_>> = denoisers
            .iter()
            .map(|d| Binder::new(d, cuda_graph(&d.key)))
            .collect();
        let mut dmd_binders: Vec<Binder<'_>> = dmd_sessions
            .iter()
            .map(|d| Binder::new(d, cuda_graph(&d.key)))
            .collect();
        let mut run_steps: [Vec<Vec<StepRuns>>; 2] = [Vec::new(), Vec::new()];
        for v in 0..2 {
            for s in 0..stages {
                let mut runs = Vec::new();
                for (i, &(ti, si, ni)) in scalar_index[v][s].iter().enumerate() {
                    let [la, lb] = &mut lats[s];
                    // step i reads start (i = 0) or the previous step's next, and writes the other buffer
                    let (sample, next): (&DynTensor, &mut DynTensor) = match (i, i % 2) {
                        (0, _) => (&starts[s], la),
                        (_, 1) => (&*la, lb),
                        _ => (&*lb, la),
                    };
                    let denoise = den_binders[s].bind(
                        &[
                            (port::HIDDEN_STATES, sample),
                            (port::TIMESTEP, &scalars[ti]),
                            (port::ENCODER_HIDDEN_STATES, &buffers.text),
                            (port::LATENTS_HISTORY_SHORT, &short),
                            (port::LATENTS_HISTORY_MID, &mid),
                            (port::LATENTS_HISTORY_LONG, &long),
                        ],
                        &mut [(port::VELOCITY, &mut vels[s])],
                    )?;
                    let x0: &mut DynTensor = if s < last {
                        &mut x0s[s]
                    } else {
                        &mut buffers.latents
                    };
                    let dmd_run = dmd_binders[s].bind(
                        &[
                            (port::SAMPLE, sample),
                            (port::VELOCITY, &vels[s]),
                            (port::START, &starts[s]),
                            (port::SIGMA, &scalars[si]),
                            (port::SIGMA_NEXT, &scalars[ni]),
                        ],
                        &mut [(port::X0, x0), (port::NEXT, next)],
                    )?;
                    runs.push(StepRuns {
                        denoise,
                        dmd: dmd_run,
                    });
                }
                run_steps[v].push(runs);
            }
        }
        drop(den_binders);
        drop(dmd_binders);
        let mut b = Binder::new(&decode, cuda_graph(key::VAE_DECODER_RGBA8));
        let run_decode = b.bind(
            &[(port::LATENTS, &buffers.latents)],
            &mut [(port::RGBA, &mut buffers.rgba)],
        )?;

        let mut staging = Staging {
            eps: HostTensor::new("noise upload", &eps_spec)?,
            z: z_specs
                .iter()
                .map(|sp| HostTensor::new("block noise upload", sp))
                .collect::<Result<_, _>>()?,
            text: HostTensor::new("prompt upload", &text_spec)?,
            history: HostTensor::new("history upload", &hist_spec)?,
            anchor: HostTensor::new("anchor upload", &anchor_spec)?,
            latents: HostTensor::new("latents download", &x0_specs[last])?,
            rgba: HostTensor::new("frames download", &rgba_spec)?,
        };
        let [hist0, hist1] = &mut buffers.history;
        let eps_copy = copier.to_device("noise upload", eps_spec.dtype, &mut buffers.eps)?;
        let z_copies = z_specs
            .iter()
            .zip(buffers.z.iter_mut())
            .map(|(sp, dev)| copier.to_device("block noise upload", sp.dtype, dev))
            .collect::<Result<_, _>>()?;
        let text_copy = copier.to_device("prompt upload", text_spec.dtype, &mut buffers.text)?;
        let history_copies = [
            copier.to_device("history upload", hist_spec.dtype, hist0)?,
            copier.to_device("history upload", hist_spec.dtype, hist1)?,
        ];
        let anchor_copy =
            copier.to_device("anchor upload", anchor_spec.dtype, &mut buffers.anchor)?;
        let capture_anchor = copier.between(
            "anchor capture",
            anchor_spec.dtype,
            &buffers.first_frame,
            &mut buffers.anchor,
        )?;
        let latents_copy = copier.between(
            "latents download",
            x0_specs[last].dtype,
            &buffers.latents,
            staging.latents.tensor_mut(),
        )?;
        let rgba_copy = copier.between(
            "frames download",
            rgba_spec.dtype,
            &buffers.rgba,
            staging.rgba.tensor_mut(),
        )?;
        let copies = Copies {
            copier,
            eps: eps_copy,
            z: z_copies,
            text: text_copy,
            history: history_copies,
            anchor: anchor_copy,
            capture_anchor,
            latents: latents_copy,
            rgba: rgba_copy,
        };
        let sizes = [
            manifest.history_sizes[0],
            manifest.history_sizes[1],
            manifest.history_sizes[2],
        ];
        let mut stage_buffers = starts;
        stage_buffers.extend(lats.into_iter().flatten());
        stage_buffers.extend(vels);
        stage_buffers.extend(x0s);
        stage_buffers.extend([short, mid, long]);
        let [slice0, slice1] = <[Bound; 2]>::try_from(slice_runs)
            .map_err(|_| HeliosError::internal("two history-slice bindings expected"))?;
        let [push0, push1] = <[Bound; 2]>::try_from(push_runs)
            .map_err(|_| HeliosError::internal("two history-push bindings expected"))?;
        tracing::info!(
            "device loop ready for `{}` ({} memory, {} bound runs)",
            manifest.name,
            if memory.on_gpu() { "GPU" } else { "host" },
            run_steps.iter().flatten().flatten().count() * 2 + stages + 5
        );
        Ok(Self {
            memory,
            downsample,
            renoise,
            dmd: dmd_sessions,
            push,
            slices,
            decode,
            run_downsample,
            run_renoise,
            run_slices: [slice0, slice1],
            run_push: [push0, push1],
            run_steps,
            run_decode,
            buffers,
            staging,
            copies,
            _scalars: scalars,
            _stage_buffers: stage_buffers,
            latents: vec![0f32; c * f * h * w],
            latent_dims: (1, c, f, h, w),
            text_host: Vec::new(),
            text_valid: false,
            mirror: HistoryRing::new(sizes, c, h, w),
            mirror_valid: false,
            parity: 0,
            stats: DeviceLoopStats::default(),
            stage_seconds: vec![0.0; stages],
        })
    }

    /// What the loop did so far.
    pub fn stats(&self) -> DeviceLoopStats {
        self.stats
    }

    /// Seconds each stage of the last chunk took (entering the stage, then its steps).
    pub fn last_stage_seconds(&self) -> &[f64] {
        &self.stage_seconds
    }

    /// Whether its tensors live in GPU memory.
    pub fn on_gpu(&self) -> bool {
        self.memory.on_gpu()
    }

    /// The helper sessions (for profiling).
    pub(crate) fn sessions_mut(&mut self) -> impl Iterator<Item = &mut GraphSession> {
        [
            &mut self.downsample,
            &mut self.push,
            &mut self.slices,
            &mut self.decode,
        ]
        .into_iter()
        .chain(self.renoise.iter_mut())
        .chain(self.dmd.iter_mut())
    }

    /// Forgets which stream is on the device (the next chunk uploads its history).
    pub fn invalidate(&mut self) {
        self.mirror_valid = false;
        self.text_valid = false;
    }

    fn upload_history(&mut self, history: &HistoryRing) -> Result<(), HeliosError> {
        let (c, _, h, w) = history.dims();
        let (_, mc, _, mh, mw) = self.latent_dims;
        if (c, h, w) != (mc, mh, mw) {
            return Err(HeliosError::ShapeMismatch {
                what: "stream history for the device loop".into(),
                expected: vec![mc, mh, mw],
                actual: vec![c, h, w],
            });
        }
        self.staging.history.fill_f32(|d| history.write_window(d))?;
        let c = &mut self.copies;
        c.copier
            .upload(&mut c.history[self.parity], &self.staging.history)?;
        self.staging.anchor.fill_f32(|d| {
            match history.anchor() {
                Some(a) if a.len() == d.len() => d.copy_from_slice(a),
                Some(a) => {
                    return Err(HeliosError::ShapeMismatch {
                        what: "history anchor".into(),
                        expected: vec![d.len()],
                        actual: vec![a.len()],
                    });
                }
                None => d.fill(0.0),
            }
            Ok(())
        })?;
        let c = &mut self.copies;
        c.copier.upload(&mut c.anchor, &self.staging.anchor)?;
        self.stats.uploads += 2;
        self.stats.history_uploads += 1;
        Ok(())
    }

    fn upload_text(&mut self, text: &Array3<f32>) -> Result<(), HeliosError> {
        let same = self.text_valid
            && text.len() == self.text_host.len()
            && text.iter().zip(&self.text_host).all(|(a, b)| a == b);
        if same {
            return Ok(());
        }
        self.text_valid = false;
        self.staging.text.fill_f32(|d| {
            if d.len() != text.len() {
                return Err(HeliosError::ShapeMismatch {
                    what: "prompt embedding".into(),
                    expected: vec![d.len()],
                    actual: text.shape().to_vec(),
                });
            }
            d.iter_mut().zip(text.iter()).for_each(|(d, s)| *d = *s);
            Ok(())
        })?;
        let c = &mut self.copies;
        c.copier.upload(&mut c.text, &self.staging.text)?;
        self.text_host.clear();
        self.text_host.extend(text.iter());
        self.text_valid = true;
        self.stats.uploads += 1;
        Ok(())
    }

    /// Runs one chunk (see [`crate::core::sampler::ChunkRunner`]).
    pub(crate) fn run_chunk(
        &mut self,
        denoisers: &mut [GraphSession],
        sampler: &Sampler,
        chunk_index: u64,
        text: &Array3<f32>,
        history: &mut HistoryRing,
        noise: &mut dyn NoiseSource,
    ) -> Result<RunnerOutput<'_>, HeliosError> {
        let t0 = Instant::now();
        let _span = tracing::debug_span!("helios_device_chunk", chunk_index).entered();
        let v = usize::from(sampler.amplifies(chunk_index));
        if denoisers.len() != self.run_steps[v].len() {
            return Err(HeliosError::internal(
                "the device loop was built for another set of denoisers",
            ));
        }
        if sampler.latent_dims()
            != (
                self.latent_dims.1,
                self.latent_dims.2,
                self.latent_dims.3,
                self.latent_dims.4,
            )
        {
            return Err(HeliosError::internal(
                "the sampler belongs to another model than the device loop",
            ));
        }
        if !(self.mirror_valid && self.mirror == *history) {
            self.upload_history(history)?;
        }
        // Until this chunk succeeds the device history is not known to match any host state.
        self.mirror_valid = false;
        self.upload_text(text)?;

        // The reference's draws of a chunk, in its order: ε, then z for each stage entered.
        self.staging
            .eps
            .fill_f32(|d| noise.fill(DrawKind::LatentNoise, d))?;
        let c = &mut self.copies;
        c.copier.upload(&mut c.eps, &self.staging.eps)?;
        for (i, (host, copy)) in self.staging.z.iter_mut().zip(c.z.iter_mut()).enumerate() {
            host.fill_f32(|d| noise.fill(DrawKind::BlockNoise { stage: i + 1 }, d))?;
            c.copier.upload(copy, host)?;
        }
        self.stats.uploads += 1 + self.buffers.z.len() as u64;

        let stats = &mut self.stats;
        self.run_downsample.run(&mut self.downsample, stats)?;
        self.run_slices[self.parity].run(&mut self.slices, stats)?;
        let stage_runs = self.run_steps[v].iter().zip(denoisers.iter_mut());
        for (s, ((steps, denoiser), dmd)) in stage_runs.zip(self.dmd.iter_mut()).enumerate() {
            let stage_start = Instant::now();
            if s > 0 {
                self.run_renoise[s - 1].run(&mut self.renoise[s - 1], stats)?;
            }
            for step in steps {
                step.denoise.run(denoiser, stats)?;
                step.dmd.run(dmd, stats)?;
            }
            self.stage_seconds[s] = stage_start.elapsed().as_secs_f64();
        }
        let t1 = Instant::now();
        self.run_push[self.parity].run(&mut self.push, stats)?;
        self.run_decode.run(&mut self.decode, stats)?;

        let c = &mut self.copies;
        c.copier.run(&c.latents)?;
        self.staging.latents.read_f32(&mut self.latents)?;
        c.copier.run(&c.rgba)?;
        self.stats.downloads += 2;
        let bad = self.latents.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(HeliosError::NonFinite {
                graph: "device loop (chunk latents)".into(),
                count: bad,
            });
        }

        // The host loop's tail: capture the anchor on a stream's first chunk, then push the chunk.
        let latents = ArrayView5::from_shape(self.latent_dims, &self.latents)
            .map_err(|e| HeliosError::internal(format!("chunk latents: {e}")))?;
        let chunk = latents.index_axis(Axis(0), 0);
        if chunk_index == 0 && !history.has_anchor() {
            history.set_anchor(chunk.slice(s![.., 0..1, .., ..]))?;
            let c = &mut self.copies;
            c.copier.run(&c.capture_anchor)?;
            self.stats.device_copies += 1;
        }
        history.push(chunk)?;
        self.parity ^= 1;
        self.mirror.copy_from(history);
        self.mirror_valid = true;
        self.stats.chunks += 1;

        let timings = ChunkTimings {
            denoise_s: (t1 - t0).as_secs_f64(),
            decode_s: t1.elapsed().as_secs_f64(),
        };
        Ok(RunnerOutput {
            latents: ArrayView5::from_shape(self.latent_dims, &self.latents)
                .map_err(|e| HeliosError::internal(format!("chunk latents: {e}")))?,
            rgba: self.staging.rgba.bytes()?,
            timings,
        })
    }
}
