//! ort sessions for a model directory: provider chain, signature checks against the manifest, and
//! the [`Denoiser`]/[`Decoder`] implementations and the VAE encoder the sampler drives.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use ndarray::{Array3, Array5, ArrayD, Ix5};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorRef, ValueType};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::binding::element_type;
use super::device_loop::{DeviceLoop, DeviceLoopStats, missing_graphs};
use super::environment;
use super::prepare::engines_not_ready;
use super::provider::{GraphOptions, Provider, ProviderReport};
use super::weights::SharedWeights;
use crate::core::graph_contract::{key, port};
use crate::core::manifest::{GraphSpec, ModelManifest};
use crate::core::sampler::history::HistoryRing;
use crate::core::sampler::noise::NoiseSource;
use crate::core::sampler::{ChunkRunner, Decoder, Denoiser, DenoiserInput, RunnerOutput, Sampler};
use crate::error::HeliosError;

/// Whether chunks run in the device-resident loop ([`DeviceLoop`]) or in the host sampler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DeviceLoopMode {
    /// The device loop when the active provider is CUDA or TensorRT and the model has its graphs (see
    /// [`super::device_loop::required_graphs`]); if it cannot be set up, a warning and the host loop.
    #[default]
    Auto,
    /// Always the device loop, on any provider (the CPU provider runs the same code, which is how it is
    /// tested); loading fails if the model lacks its graphs.
    On,
    /// Always the host loop ([`Sampler::sample_chunk`]).
    Off,
}

/// How the runtime is set up.
///
/// In RON (the fields all have defaults):
/// ```ron
/// (
///     providers: [Cuda((tf32: false)), Cpu],
///     device_loop: Auto,
///     // per graph key, or a prefix ending in `*`; see GraphOptions::builtin for the defaults
///     graphs: { "vae_*": (tf32: Some(true)), "dmd_step_*": (cuda_graph: Some(true)) },
/// )
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Providers to try, in order; the first that loads the model is used for every graph.
    pub providers: Vec<Provider>,
    /// CPU threads per graph (None: ONNX Runtime's default, one per core).
    pub intra_threads: Option<usize>,
    /// Check the SHA-256 of every file the model loads against the manifest before loading: graphs, their
    /// external data, shared weights, the prompt bank and the text encoder. One streamed pass per file
    /// (about 15 s for the 14B model's 28.6 GB of weights); off skips it, sizes are checked either way.
    pub verify_hashes: bool,
    /// Per-graph choices (TF32, CUDA graphs) by graph key or `prefix*`; they override
    /// [`GraphOptions::builtin`], which overrides the provider's own options.
    pub graphs: BTreeMap<String, GraphOptions>,
    /// Device-resident loop or host loop.
    pub device_loop: DeviceLoopMode,
    /// On GPU providers, fail to load rather than let ONNX Runtime place any node on the CPU
    /// (`session.disable_cpu_ep_fallback`); CUDA graphs need this to hold.
    pub strict_placement: bool,
    /// Write ONNX Runtime profiles: one file per session, `<prefix>.<graph key>_<timestamp>.json`,
    /// finished by [`OrtModel::end_profiling`] (e.g. `prof/ort` gives `prof/ort.denoiser_stage2_….json`).
    pub profile_prefix: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            providers: Provider::default_chain(),
            intra_threads: None,
            verify_hashes: true,
            graphs: BTreeMap::new(),
            device_loop: DeviceLoopMode::Auto,
            strict_placement: false,
            profile_prefix: None,
        }
    }
}

impl RuntimeConfig {
    /// CPU only.
    pub fn cpu() -> Self {
        Self {
            providers: vec![Provider::Cpu],
            ..Self::default()
        }
    }

    /// The (TF32, CUDA graph) a graph gets on `provider` with this configuration.
    pub fn graph_choice(&self, provider: &Provider, key: &str) -> (bool, bool) {
        provider.resolve(key, GraphOptions::lookup(&self.graphs, key))
    }
}

/// Something that can be fed to a graph input.
pub(crate) enum Feed<'a> {
    F32View(ndarray::ArrayViewD<'a, f32>),
    I64(Vec<i64>, Vec<usize>),
}

/// One loaded graph with its manifest signature.
pub struct GraphSession {
    pub(crate) key: String,
    spec: GraphSpec,
    pub(crate) session: Session,
}

impl GraphSession {
    /// Graph key (`denoiser_stage0`, ...).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Runs a graph whose inputs are all f32, by name; returns every output.
    pub fn run_f32(
        &mut self,
        inputs: &[(&str, ndarray::ArrayViewD<'_, f32>)],
    ) -> Result<BTreeMap<String, ArrayD<f32>>, HeliosError> {
        self.run(
            inputs
                .iter()
                .map(|(n, a)| (*n, Feed::F32View(a.clone())))
                .collect(),
        )
    }

    /// Runs the graph with inputs by name; returns every output as an f32 array.
    pub(crate) fn run(
        &mut self,
        feeds: Vec<(&str, Feed<'_>)>,
    ) -> Result<BTreeMap<String, ArrayD<f32>>, HeliosError> {
        let key = self.key.clone();
        let err = |e: ort::Error| HeliosError::inference(&key, e);
        let mut inputs: Vec<(std::borrow::Cow<'_, str>, SessionInputValue<'_>)> = Vec::new();
        for (name, feed) in feeds {
            let spec = self
                .spec
                .inputs
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| HeliosError::ManifestMismatch {
                    graph: key.clone(),
                    reason: format!("no input `{name}`"),
                })?;
            let shape: Vec<usize> = match &feed {
                Feed::F32View(a) => a.shape().to_vec(),
                Feed::I64(_, s) => s.clone(),
            };
            if shape != spec.shape {
                return Err(HeliosError::ShapeMismatch {
                    what: format!("input `{name}` of `{key}`"),
                    expected: spec.shape.clone(),
                    actual: shape,
                });
            }
            let value: SessionInputValue<'_> = match feed {
                Feed::F32View(a) => TensorRef::from_array_view(a).map_err(err)?.into(),
                Feed::I64(v, s) => Tensor::from_array((s, v)).map_err(err)?.into(),
            };
            inputs.push((name.into(), value));
        }
        let outputs = self.session.run(inputs).map_err(err)?;
        let mut out = BTreeMap::new();
        for spec in &self.spec.outputs {
            let value =
                outputs
                    .get(spec.name.as_str())
                    .ok_or_else(|| HeliosError::ManifestMismatch {
                        graph: key.clone(),
                        reason: format!("output `{}` missing at run time", spec.name),
                    })?;
            let arr = value.try_extract_array::<f32>().map_err(err)?.to_owned();
            let bad = arr.iter().filter(|v| !v.is_finite()).count();
            if bad > 0 {
                return Err(HeliosError::NonFinite {
                    graph: key.clone(),
                    count: bad,
                });
            }
            out.insert(spec.name.clone(), arr);
        }
        Ok(out)
    }
}

fn to5(key: &str, name: &str, a: ArrayD<f32>) -> Result<Array5<f32>, HeliosError> {
    let shape = a.shape().to_vec();
    a.into_dimensionality::<Ix5>()
        .map_err(|_| HeliosError::ShapeMismatch {
            what: format!("output `{name}` of `{key}`"),
            expected: vec![0; 5],
            actual: shape,
        })
}

/// Checks a loaded session's inputs/outputs against the manifest (names, static shapes, dtypes).
fn check_signature(key: &str, session: &Session, spec: &GraphSpec) -> Result<(), HeliosError> {
    let mismatch = |reason: String| HeliosError::ManifestMismatch {
        graph: key.to_string(),
        reason,
    };
    let sides = [
        ("input", session.inputs(), &spec.inputs),
        ("output", session.outputs(), &spec.outputs),
    ];
    for (side, actual, declared) in sides {
        if actual.len() != declared.len() {
            return Err(mismatch(format!(
                "{} {side}s in the graph, {} in the manifest",
                actual.len(),
                declared.len()
            )));
        }
        for want in declared {
            let Some(have) = actual.iter().find(|o| o.name() == want.name) else {
                return Err(mismatch(format!("the graph has no {side} `{}`", want.name)));
            };
            let ValueType::Tensor { ty, shape, .. } = have.dtype() else {
                return Err(mismatch(format!("{side} `{}` is not a tensor", want.name)));
            };
            if *ty != element_type(want.dtype) {
                return Err(mismatch(format!(
                    "{side} `{}` is {ty:?} in the graph, {:?} in the manifest",
                    want.name, want.dtype
                )));
            }
            let dims: Vec<i64> = shape.iter().copied().collect();
            let ok = dims.len() == want.shape.len()
                && dims
                    .iter()
                    .zip(&want.shape)
                    .all(|(d, w)| *d < 0 || *d as usize == *w);
            if !ok {
                return Err(mismatch(format!(
                    "{side} `{}` has shape {dims:?} in the graph, {:?} in the manifest",
                    want.name, want.shape
                )));
            }
        }
    }
    Ok(())
}

/// Lower-case hex SHA-256 of a file, read in 1 MiB pieces (a 28 GB file costs one pass and 1 MiB of memory).
pub(crate) fn sha256_file(path: &Path) -> Result<String, HeliosError> {
    let mut file = std::fs::File::open(path).map_err(|source| HeliosError::ModelMissing {
        path: path.to_path_buf(),
        source,
    })?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|source| HeliosError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Checks a file exists and (if asked) that its hash matches; an empty `sha256` is not checked.
pub(crate) fn check_file(path: &Path, sha256: &str, verify: bool) -> Result<(), HeliosError> {
    check_sized_file(path, sha256, None, verify)
}

/// [`check_file`], and when `bytes` is given the file's size, whether or not hashes are verified: a
/// truncated weights file is named here rather than reported against the graph that reads it.
pub(crate) fn check_sized_file(
    path: &Path,
    sha256: &str,
    bytes: Option<u64>,
    verify: bool,
) -> Result<(), HeliosError> {
    let meta = std::fs::metadata(path).map_err(|source| HeliosError::ModelMissing {
        path: path.to_path_buf(),
        source,
    })?;
    if let Some(want) = bytes
        && meta.len() != want
    {
        return Err(HeliosError::ModelCorrupt {
            path: path.to_path_buf(),
            reason: format!(
                "{} bytes, the manifest says {want} (truncated or replaced)",
                meta.len()
            ),
        });
    }
    if verify && !sha256.is_empty() {
        let actual = sha256_file(path)?;
        if !actual.eq_ignore_ascii_case(sha256) {
            return Err(HeliosError::ModelCorrupt {
                path: path.to_path_buf(),
                reason: format!("SHA-256 {actual} differs from the manifest's {sha256}"),
            });
        }
    }
    Ok(())
}

/// Creates the session of graph `key` on `provider` with that graph's options from `config`, with the
/// `shared` weights as initializers when given.
///
/// Errors are `(true, ..)` when the provider itself failed and `(false, ..)` when the model failed on a
/// working provider.
pub(crate) fn build_session(
    path: &Path,
    key: &str,
    provider: &Provider,
    config: &RuntimeConfig,
    shared: Option<&SharedWeights>,
) -> Result<Session, (bool, String)> {
    let env = environment().map_err(|e| (true, e.to_string()))?;
    let mut builder = Session::builder(&env).map_err(|e| (true, e.to_string()))?;
    builder = builder
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| (true, e.to_string()))?;
    if let Some(n) = config.intra_threads {
        builder = builder
            .with_intra_threads(n)
            .map_err(|e| (true, e.to_string()))?;
    }
    if let Some(prefix) = &config.profile_prefix {
        if let Some(parent) = prefix.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| (false, format!("profile directory: {e}")))?;
        }
        let mut file = prefix.as_os_str().to_owned();
        file.push(format!(".{key}"));
        builder = builder
            .with_profiling(PathBuf::from(file))
            .map_err(|e| (false, e.to_string()))?;
    }
    // Every session knows the fused operators; graphs without them are unaffected.
    let operators = super::kernels::domain(provider).map_err(|e| (false, e.to_string()))?;
    builder = builder
        .with_operators(operators)
        .map_err(|e| (false, e.to_string()))?;
    let (tf32, cuda_graph) = config.graph_choice(provider, key);
    let dispatch = provider.dispatch(tf32, cuda_graph);
    if !dispatch.is_empty() {
        builder = builder
            .with_execution_providers(dispatch)
            .map_err(|e| (true, e.to_string()))?;
        if config.strict_placement {
            builder = builder
                .with_disable_cpu_fallback()
                .map_err(|e| (false, e.to_string()))?;
        }
        tracing::debug!(
            "graph `{key}` on {}: TF32 {tf32}, CUDA graph {cuda_graph}",
            provider.name()
        );
    }
    if let Some(weights) = shared {
        builder = weights.apply(builder).map_err(|e| (false, e))?;
    }
    commit_first_with_domain(|| builder.commit_from_file(path)).map_err(|e| {
        // The provider's own code runs at commit (device set-up, engine builds), so a commit can fail
        // for the provider as well as for the model.
        let provider_fault = is_provider_fault(e.code());
        (
            provider_fault && !matches!(provider, Provider::Cpu),
            e.to_string(),
        )
    })
}

/// Whether a failed commit on a GPU provider is the provider's fault (the chain tries the next provider)
/// rather than the model's (loading stops with the file named), judged by ONNX Runtime's error code.
///
/// Only the codes that name the model file (a graph that does not parse or validate, a missing file) are the
/// model's. Everything else is the provider's: ONNX Runtime reports a provider library that fails to load as
/// `ORT_FAIL` and a CUDA or TensorRT failure during set-up as `ORT_RUNTIME_EXCEPTION` or `ORT_EP_FAIL`, with
/// no code of their own. A model fault misread this way costs one attempt on the next provider, where the same
/// graph fails again with its own code.
fn is_provider_fault(code: ort::ErrorCode) -> bool {
    use ort::ErrorCode;
    !matches!(
        code,
        ErrorCode::InvalidProtobuf
            | ErrorCode::InvalidGraph
            | ErrorCode::NoSuchFile
            | ErrorCode::NoModel
    )
}

/// Commits a session, one thread at a time until the first commit in this process has succeeded.
///
/// ONNX Runtime adds a custom operator domain (ours, `com.helios`) to ONNX's process-wide domain table with an
/// unlocked check-then-insert, so two sessions committed at once on different threads can both insert and the
/// second fails with "domain is already exist". Once one commit has put the domain in the table, later commits
/// only read it and run in parallel.
fn commit_first_with_domain(commit: impl FnOnce() -> ort::Result<Session>) -> ort::Result<Session> {
    static DOMAIN_REGISTERED: Mutex<bool> = Mutex::new(false);
    let mut registered = DOMAIN_REGISTERED
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if *registered {
        drop(registered);
        return commit();
    }
    let session = commit()?;
    *registered = true;
    Ok(session)
}

/// All sessions of a model directory, on one provider, and the device loop when it is in use.
pub struct OrtModel {
    dir: PathBuf,
    manifest: ModelManifest,
    denoisers: Vec<GraphSession>,
    decoder: GraphSession,
    extra: BTreeMap<String, GraphSession>,
    report: ProviderReport,
    device_loop: Option<DeviceLoop>,
    device_loop_note: String,
    /// Declared last: the sessions above use these tensors, so they must be dropped first.
    shared_weights: Option<SharedWeights>,
}

impl OrtModel {
    /// Loads every graph of `dir` (manifest already parsed), walking the provider chain.
    pub fn load(
        dir: &Path,
        manifest: &ModelManifest,
        config: &RuntimeConfig,
    ) -> Result<Self, HeliosError> {
        if config.providers.is_empty() {
            return Err(HeliosError::NoProvider("the provider list is empty".into()));
        }
        let shared_file = manifest
            .shared_weights
            .iter()
            .map(|w| (w.file.as_str(), w.sha256.as_str(), None));
        let graph_files = manifest
            .graphs
            .values()
            .map(|g| (g.file.as_str(), g.sha256.as_str(), None));
        let data_files = manifest
            .external_data
            .iter()
            .map(|d| (d.file.as_str(), d.sha256.as_str(), Some(d.bytes)));
        if config.verify_hashes {
            warn_unlisted_data(dir, manifest);
        }
        for (file, sha256, bytes) in graph_files.chain(shared_file).chain(data_files) {
            check_sized_file(&dir.join(file), sha256, bytes, config.verify_hashes).map_err(
                |e| match e {
                    HeliosError::ModelMissing { path, source } => {
                        HeliosError::ModelMissing { path, source }
                    }
                    other => {
                        tracing::error!("model file `{file}`: {other}");
                        other
                    }
                },
            )?;
        }
        let mut skipped = Vec::new();
        for provider in &config.providers {
            if let Provider::TensorRt(options) = provider
                && let Some(reason) = engines_not_ready(options, manifest)
            {
                tracing::warn!("TensorRT provider skipped, trying the next: {reason}");
                skipped.push((provider.name().to_string(), reason));
                continue;
            }
            match Self::load_on(dir, manifest, provider, config) {
                Ok(mut model) => {
                    model.report = ProviderReport {
                        active: provider.name().into(),
                        skipped,
                    };
                    tracing::info!(
                        "helios model `{}` loaded on {}; {}",
                        manifest.name,
                        model.report,
                        model.device_loop_note
                    );
                    return Ok(model);
                }
                Err(LoadFailure::Provider(reason)) => {
                    tracing::warn!(
                        "{} provider unavailable, trying the next: {reason}",
                        provider.name()
                    );
                    skipped.push((provider.name().to_string(), reason));
                }
                Err(LoadFailure::Model(e)) => return Err(e),
            }
        }
        Err(HeliosError::NoProvider(
            skipped
                .iter()
                .map(|(n, r)| format!("{n}: {r}"))
                .collect::<Vec<_>>()
                .join("; "),
        ))
    }

    fn load_on(
        dir: &Path,
        manifest: &ModelManifest,
        provider: &Provider,
        config: &RuntimeConfig,
    ) -> Result<Self, LoadFailure> {
        // GPU providers load weights that several graphs share once (CPU sessions read the external data).
        let shared_weights = match &manifest.shared_weights {
            Some(w) if provider.is_gpu() => Some(
                SharedWeights::load(&dir.join(&w.file), provider).map_err(|e| match e {
                    HeliosError::RuntimeUnavailable(_)
                    | HeliosError::ProviderUnavailable { .. } => {
                        LoadFailure::Provider(e.to_string())
                    }
                    other => LoadFailure::Model(other),
                })?,
            ),
            _ => None,
        };
        let open = |key: &str| -> Result<GraphSession, LoadFailure> {
            let spec = manifest.graphs.get(key).cloned().ok_or_else(|| {
                LoadFailure::Model(HeliosError::ManifestInvalid {
                    path: dir.join("manifest.ron"),
                    field: format!("graphs.{key}"),
                    reason: format!("graph `{key}` is missing"),
                })
            })?;
            let path = dir.join(&spec.file);
            let shared = shared_weights.as_ref().filter(|_| {
                manifest
                    .shared_weights
                    .as_ref()
                    .is_some_and(|w| w.graphs.iter().any(|g| g == key))
            });
            let session = build_session(&path, key, provider, config, shared).map_err(
                |(provider_fault, reason)| {
                    if provider_fault {
                        LoadFailure::Provider(reason)
                    } else {
                        LoadFailure::Model(HeliosError::ModelCorrupt {
                            path: path.clone(),
                            reason,
                        })
                    }
                },
            )?;
            check_signature(key, &session, &spec).map_err(LoadFailure::Model)?;
            Ok(GraphSession {
                key: key.to_string(),
                spec,
                session,
            })
        };
        let mut denoisers = Vec::new();
        for s in 0..manifest.scheduler.stages {
            denoisers.push(open(&key::denoiser(s))?);
        }
        let decoder = open(key::VAE_DECODER)?;
        let mut extra = BTreeMap::new();
        for key in [key::VAE_ENCODER_IMAGE, key::VAE_ENCODER_CLIP] {
            if manifest.graphs.contains_key(key) {
                extra.insert(key.to_string(), open(key)?);
            }
        }
        let missing = missing_graphs(manifest);
        let wanted = match config.device_loop {
            DeviceLoopMode::Off => Err("off (configured)".to_string()),
            DeviceLoopMode::On => Ok(()),
            DeviceLoopMode::Auto if !provider.is_gpu() => {
                Err("off (host loop on the CPU provider)".to_string())
            }
            DeviceLoopMode::Auto if !missing.is_empty() => {
                Err(format!("off (the model lacks {})", missing.join(", ")))
            }
            DeviceLoopMode::Auto => Ok(()),
        };
        let (device_loop, device_loop_note) = match wanted {
            Err(note) => (None, format!("device loop {note}")),
            Ok(()) => {
                let made = DeviceLoop::new(
                    manifest,
                    provider,
                    &denoisers,
                    |key| {
                        open(key).map_err(|e| match e {
                            LoadFailure::Model(e) => e,
                            LoadFailure::Provider(reason) => HeliosError::ProviderUnavailable {
                                provider: provider.name().into(),
                                reason,
                            },
                        })
                    },
                    |key| config.graph_choice(provider, key).1,
                );
                match made {
                    Ok(dl) => (Some(dl), "device loop on".to_string()),
                    Err(e) if config.device_loop == DeviceLoopMode::On => {
                        return Err(LoadFailure::Model(e));
                    }
                    Err(e) => {
                        tracing::warn!("device loop unavailable, using the host loop: {e}");
                        (None, format!("device loop off ({e})"))
                    }
                }
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest: manifest.clone(),
            denoisers,
            decoder,
            extra,
            report: ProviderReport {
                active: provider.name().into(),
                skipped: Vec::new(),
            },
            device_loop,
            device_loop_note,
            shared_weights,
        })
    }

    /// Whether chunks run in the device loop, and if not, why: `device loop on` or
    /// `device loop off (reason)`.
    pub fn device_loop_note(&self) -> &str {
        &self.device_loop_note
    }

    /// The device loop's counters, when it is in use.
    pub fn device_loop_stats(&self) -> Option<DeviceLoopStats> {
        self.device_loop.as_ref().map(DeviceLoop::stats)
    }

    /// Seconds each pyramid stage took in the device loop's last chunk (entering the stage and its
    /// steps), when the device loop is in use.
    pub fn device_loop_stage_seconds(&self) -> Option<&[f64]> {
        self.device_loop
            .as_ref()
            .map(DeviceLoop::last_stage_seconds)
    }

    /// Ends ONNX Runtime profiling of every session (with [`RuntimeConfig::profile_prefix`] set); returns
    /// `(graph key, profile file)` per session.
    pub fn end_profiling(&mut self) -> Result<Vec<(String, PathBuf)>, HeliosError> {
        let mut files = Vec::new();
        let sessions = self
            .denoisers
            .iter_mut()
            .chain(std::iter::once(&mut self.decoder))
            .chain(self.extra.values_mut())
            .chain(
                self.device_loop
                    .iter_mut()
                    .flat_map(DeviceLoop::sessions_mut),
            );
        for g in sessions {
            let file = g
                .session
                .end_profiling()
                .map_err(|e| HeliosError::inference(&g.key, e))?;
            files.push((g.key.clone(), PathBuf::from(file)));
        }
        Ok(files)
    }

    /// Bytes of device memory held once for the weights the denoiser stages share (`None` when the model has
    /// no shared weights or runs on the CPU provider, where each session reads them itself).
    pub fn shared_weight_bytes(&self) -> Option<u64> {
        self.shared_weights.as_ref().map(SharedWeights::bytes)
    }

    /// Which provider runs the model and what was skipped.
    pub fn provider(&self) -> &ProviderReport {
        &self.report
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens an additional graph of the manifest (e.g. the GPU helper graphs) on the CPU provider.
    pub fn open_extra(&mut self, key: &str) -> Result<&mut GraphSession, HeliosError> {
        if !self.extra.contains_key(key) {
            let spec = self.manifest.graphs.get(key).cloned().ok_or_else(|| {
                HeliosError::ManifestInvalid {
                    path: self.dir.join("manifest.ron"),
                    field: format!("graphs.{key}"),
                    reason: format!("graph `{key}` is missing"),
                }
            })?;
            let path = self.dir.join(&spec.file);
            let session = build_session(&path, key, &Provider::Cpu, &RuntimeConfig::cpu(), None)
                .map_err(|(_, reason)| HeliosError::ModelCorrupt {
                    path: path.clone(),
                    reason,
                })?;
            check_signature(key, &session, &spec)?;
            self.extra.insert(
                key.to_string(),
                GraphSession {
                    key: key.to_string(),
                    spec,
                    session,
                },
            );
        }
        Ok(self.extra.get_mut(key).expect("inserted above"))
    }

    /// Encodes frames `[1, 3, T, H, W]` in [-1, 1] with `vae_encoder_image` (T = 1) or
    /// `vae_encoder_clip` (T = 33); returns the posterior (mean, logvar).
    pub fn encode(
        &mut self,
        video: &Array5<f32>,
    ) -> Result<(Array5<f32>, Array5<f32>), HeliosError> {
        let key = if video.dim().2 == 1 {
            key::VAE_ENCODER_IMAGE
        } else {
            key::VAE_ENCODER_CLIP
        };
        let session = self
            .extra
            .get_mut(key)
            .ok_or_else(|| HeliosError::Unsupported {
                what: format!(
                    "image conditioning: model `{}` has no `{key}` graph",
                    self.manifest.name
                ),
            })?;
        let mut out = session.run(vec![(port::VIDEO, Feed::F32View(video.view().into_dyn()))])?;
        let mean = to5(key, port::MEAN, out.remove(port::MEAN).unwrap_or_default())?;
        let logvar = to5(
            key,
            port::LOGVAR,
            out.remove(port::LOGVAR).unwrap_or_default(),
        )?;
        Ok((mean, logvar))
    }

    /// Whether image conditioning graphs are present.
    pub fn has_encoder(&self) -> bool {
        self.extra.contains_key(key::VAE_ENCODER_IMAGE)
            && self.extra.contains_key(key::VAE_ENCODER_CLIP)
    }
}

/// Warns about `*.data` files next to the graphs that the manifest does not list (a manifest written before
/// `external_data` existed): their bytes load unverified.
fn warn_unlisted_data(dir: &Path, manifest: &ModelManifest) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let listed = manifest.external_data.iter().any(|d| d.file == name)
            || manifest.shared_weights.iter().any(|w| w.file == name);
        if name.ends_with(".data") && !listed {
            tracing::warn!(
                "{}: not in the manifest's external_data, so its weights are not verified; re-export                  the model to list it",
                entry.path().display()
            );
        }
    }
}

enum LoadFailure {
    Provider(String),
    Model(HeliosError),
}

impl ChunkRunner for OrtModel {
    fn run_chunk(
        &mut self,
        sampler: &Sampler,
        chunk_index: u64,
        text: &Array3<f32>,
        history: &mut HistoryRing,
        noise: &mut dyn NoiseSource,
    ) -> Result<RunnerOutput<'_>, HeliosError> {
        let device_loop = self
            .device_loop
            .as_mut()
            .ok_or_else(|| HeliosError::Unsupported {
                what: "this model runs without the device loop".into(),
            })?;
        device_loop.run_chunk(
            &mut self.denoisers,
            sampler,
            chunk_index,
            text,
            history,
            noise,
        )
    }
}

impl Denoiser for OrtModel {
    fn chunk_runner(&mut self) -> Option<&mut dyn ChunkRunner> {
        if self.device_loop.is_some() {
            Some(self)
        } else {
            None
        }
    }

    fn velocity(&mut self, input: &DenoiserInput<'_>) -> Result<Array5<f32>, HeliosError> {
        let session = self.denoisers.get_mut(input.stage).ok_or_else(|| {
            HeliosError::internal(format!("no denoiser for stage {}", input.stage))
        })?;
        let key = session.key.clone();
        let mut out = session.run(vec![
            (
                port::HIDDEN_STATES,
                Feed::F32View(input.sample.view().into_dyn()),
            ),
            (port::TIMESTEP, Feed::I64(vec![input.timestep], vec![1])),
            (
                port::ENCODER_HIDDEN_STATES,
                Feed::F32View(input.text.view().into_dyn()),
            ),
            (
                port::LATENTS_HISTORY_SHORT,
                Feed::F32View(input.history.short.view().into_dyn()),
            ),
            (
                port::LATENTS_HISTORY_MID,
                Feed::F32View(input.history.mid.view().into_dyn()),
            ),
            (
                port::LATENTS_HISTORY_LONG,
                Feed::F32View(input.history.long.view().into_dyn()),
            ),
        ])?;
        to5(
            &key,
            port::VELOCITY,
            out.remove(port::VELOCITY).unwrap_or_default(),
        )
    }
}

impl Decoder for OrtModel {
    fn decode(&mut self, latents: &Array5<f32>) -> Result<Array5<f32>, HeliosError> {
        let mut out = self.decoder.run(vec![(
            port::LATENTS,
            Feed::F32View(latents.view().into_dyn()),
        )])?;
        to5(
            key::VAE_DECODER,
            port::VIDEO,
            out.remove(port::VIDEO).unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ort::ErrorCode;

    #[test]
    fn commit_failures_are_classified_by_error_code() {
        let cases = [
            // A provider library that does not load, a CUDA failure in set-up, an engine build that fails.
            (ErrorCode::GenericFailure, true),
            (ErrorCode::RuntimeException, true),
            (ErrorCode::ExecutionProviderFailure, true),
            (ErrorCode::EngineError, true),
            (ErrorCode::DeviceReset, true),
            // The model file itself.
            (ErrorCode::InvalidProtobuf, false),
            (ErrorCode::InvalidGraph, false),
            (ErrorCode::NoSuchFile, false),
            (ErrorCode::NoModel, false),
        ];
        for (code, provider) in cases {
            assert_eq!(
                is_provider_fault(code),
                provider,
                "{code:?} should be a {} fault",
                if provider { "provider" } else { "model" }
            );
        }
    }
}
