//! The runtime on `models/helios-tiny` (CPU): determinism, save/restore-and-continue, the provider chain
//! and its fallback, and typed errors for bad models and bad input.

mod common;

use std::path::{Path, PathBuf};

use bevy_helios::core::manifest::ModelManifest;
use bevy_helios::core::model::HeliosModel;
use bevy_helios::core::runtime::{CudaOptions, Provider, RuntimeConfig, TensorRtOptions};
use bevy_helios::prelude::*;
use sha2::{Digest, Sha256};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn hash_frames(chunks: &[Chunk]) -> String {
    let mut h = Sha256::new();
    for c in chunks {
        for f in &c.frames {
            h.update(f);
        }
    }
    format!("{:x}", h.finalize())
}

fn run(
    model: &mut HeliosModel,
    state: &mut GenerationState,
    n: usize,
) -> Result<Vec<Chunk>, HeliosError> {
    (0..n).map(|_| model.next_chunk(state)).collect()
}

/// A scratch copy of the tiny model that a test may break.
fn scratch_model(tag: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("helios-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    for entry in std::fs::read_dir(common::tiny_model_dir())? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.join(entry.file_name()))?;
    }
    Ok(dir)
}

fn edit_manifest(dir: &Path, from: &str, to: &str) -> TestResult {
    let path = dir.join("manifest.ron");
    let text = std::fs::read_to_string(&path)?;
    assert!(text.contains(from), "manifest should contain `{from}`");
    std::fs::write(&path, text.replacen(from, to, 1))?;
    Ok(())
}

#[test]
fn same_seed_gives_identical_frames_and_other_seeds_differ() -> TestResult {
    let mut model = HeliosModel::load(common::tiny_model_dir(), &RuntimeConfig::cpu())?;
    let cfg = StreamConfig::new(PromptWeights::one("day"), 7);
    let mut a = model.new_stream(&cfg)?;
    let mut b = model.new_stream(&cfg)?;
    let mut c = model.new_stream(&StreamConfig::new(PromptWeights::one("day"), 8))?;
    let (ha, hb, hc) = (
        hash_frames(&run(&mut model, &mut a, 2)?),
        hash_frames(&run(&mut model, &mut b, 2)?),
        hash_frames(&run(&mut model, &mut c, 2)?),
    );
    assert_eq!(ha, hb, "the same seed must replay the same bytes");
    assert_ne!(ha, hc, "a different seed must give different frames");
    Ok(())
}

#[test]
fn saved_state_continues_exactly() -> TestResult {
    let mut model = HeliosModel::load(common::tiny_model_dir(), &RuntimeConfig::cpu())?;
    let mut state = model.new_stream(&StreamConfig::new(PromptWeights::one("night"), 3))?;
    run(&mut model, &mut state, 1)?;
    let saved = state.to_ron()?;
    state.set_prompt(PromptWeights::one("storm"));
    let straight = hash_frames(&run(&mut model, &mut state, 2)?);

    let mut restored = model.restore(&saved)?;
    assert_eq!(restored.chunk_index, 1);
    restored.set_prompt(PromptWeights::one("storm"));
    let resumed = hash_frames(&run(&mut model, &mut restored, 2)?);
    assert_eq!(
        straight, resumed,
        "a restored stream must continue with the same bytes"
    );

    let mut other = state.clone();
    other.model = "another-model".into();
    let err = model.restore(&other.to_ron()?).unwrap_err();
    assert!(err.to_string().contains("another-model"), "{err}");
    Ok(())
}

#[test]
fn prompt_change_shows_in_the_next_chunk() -> TestResult {
    let mut model = HeliosModel::load(common::tiny_model_dir(), &RuntimeConfig::cpu())?;
    let mut state = model.new_stream(&StreamConfig::new(PromptWeights::one("day"), 1))?;
    let first = model.next_chunk(&mut state)?;
    assert_eq!(first.prompt, PromptWeights::one("day"));
    state.set_prompt(PromptWeights::one("night"));
    let second = model.next_chunk(&mut state)?;
    assert_eq!(
        second.prompt.0.get("night"),
        Some(&1.0),
        "the next chunk should use the new prompt: {:?}",
        second.prompt
    );
    Ok(())
}

#[test]
fn provider_chain_falls_back_to_cpu_and_reports_why() -> TestResult {
    let config = RuntimeConfig {
        providers: vec![
            Provider::TensorRt(TensorRtOptions::default()),
            Provider::Cuda(CudaOptions::default()),
            Provider::Cpu,
        ],
        ..RuntimeConfig::default()
    };
    let model = HeliosModel::load(common::tiny_model_dir(), &config)?;
    let report = model.provider();
    if report.active != "CPU" {
        // A machine with a working GPU build of ONNX Runtime: the chain legitimately stopped earlier.
        eprintln!("provider chain stopped at {report}: GPU present, fallback not exercised");
        return Ok(());
    }
    let names: Vec<&str> = report.skipped.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["TensorRT", "CUDA"],
        "both GPU providers should be reported as skipped: {report}"
    );
    assert!(
        report.skipped.iter().all(|(_, why)| !why.is_empty()),
        "each skip needs a reason: {report}"
    );

    let only_gpu = RuntimeConfig {
        providers: vec![Provider::Cuda(CudaOptions::default())],
        ..RuntimeConfig::default()
    };
    match HeliosModel::load(common::tiny_model_dir(), &only_gpu) {
        Err(HeliosError::NoProvider(why)) => assert!(why.contains("CUDA"), "{why}"),
        Err(other) => panic!("expected NoProvider, got {other}"),
        Ok(_) => panic!("a CPU-only ONNX Runtime must not silently run a CUDA-only config"),
    }
    Ok(())
}

#[test]
fn missing_model_is_a_typed_error() {
    match HeliosModel::load("/nonexistent/helios-model", &RuntimeConfig::cpu()) {
        Err(HeliosError::ModelMissing { path, .. }) => assert!(path.ends_with("manifest.ron")),
        Err(other) => panic!("expected ModelMissing, got {other}"),
        Ok(_) => panic!("a missing model must not load"),
    }
}

#[test]
fn truncated_graph_is_reported_as_corrupt() -> TestResult {
    let dir = scratch_model("truncated")?;
    let path = dir.join("denoiser_stage1.onnx");
    let bytes = std::fs::read(&path)?;
    std::fs::write(&path, &bytes[..bytes.len() / 3])?;
    // With hash checks: caught before ONNX Runtime sees it.
    match HeliosModel::load(&dir, &RuntimeConfig::cpu()) {
        Err(HeliosError::ModelCorrupt { path, reason }) => {
            assert!(
                path.ends_with("denoiser_stage1.onnx") && reason.contains("SHA-256"),
                "{reason}"
            )
        }
        Err(other) => panic!("expected ModelCorrupt, got {other}"),
        Ok(_) => panic!("a truncated graph must not load"),
    }
    // Without: ONNX Runtime's parse error becomes the same typed error.
    let config = RuntimeConfig {
        verify_hashes: false,
        ..RuntimeConfig::cpu()
    };
    match HeliosModel::load(&dir, &config) {
        Err(HeliosError::ModelCorrupt { path, .. }) => {
            assert!(path.ends_with("denoiser_stage1.onnx"))
        }
        Err(other) => panic!("expected ModelCorrupt, got {other}"),
        Ok(_) => panic!("a truncated graph must not load"),
    }
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[test]
fn manifest_that_disagrees_with_a_graph_is_rejected() -> TestResult {
    let dir = scratch_model("mismatch")?;
    edit_manifest(&dir, "(name: \"video\"", "(name: \"frames\"")?;
    match HeliosModel::load(&dir, &RuntimeConfig::cpu()) {
        Err(HeliosError::ManifestMismatch { graph, reason }) => {
            assert_eq!(graph, "vae_decoder");
            assert!(reason.contains("frames"), "{reason}");
        }
        Err(other) => panic!("expected ManifestMismatch, got {other}"),
        Ok(_) => panic!("a manifest that disagrees with its graph must not load"),
    }
    std::fs::remove_dir_all(dir)?;

    let dir = scratch_model("badron")?;
    edit_manifest(&dir, "format_version: 1", "format_version: 1, surprise: 3")?;
    assert!(matches!(
        HeliosModel::load(&dir, &RuntimeConfig::cpu()),
        Err(HeliosError::ManifestInvalid { .. })
    ));
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[test]
fn wrong_embedding_dim_is_rejected() -> TestResult {
    // The manifest claims another width than the graphs take.
    let dir = scratch_model("embdim")?;
    edit_manifest(&dir, "dim: 32", "dim: 48")?;
    match HeliosModel::load(&dir, &RuntimeConfig::cpu()) {
        Err(HeliosError::ManifestInvalid { reason, .. }) => {
            assert!(reason.contains("disagrees with embeddings"), "{reason}")
        }
        Err(other) => panic!("expected ManifestInvalid, got {other}"),
        Ok(_) => panic!("wrong embedding width must not load"),
    }
    std::fs::remove_dir_all(&dir)?;

    // The bank holds entries of the wrong width.
    let dir = scratch_model("embbank")?;
    let data = vec![0u8; 16 * 48 * 4];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![16, 48], &data)?;
    let bytes = safetensors::serialize([("day", view)], None)?;
    std::fs::write(dir.join("embeddings.safetensors"), bytes)?;
    let config = RuntimeConfig {
        verify_hashes: false,
        ..RuntimeConfig::cpu()
    };
    match HeliosModel::load(&dir, &config) {
        Err(HeliosError::ShapeMismatch {
            expected, actual, ..
        }) => {
            assert_eq!((expected, actual), (vec![16, 32], vec![16, 48]))
        }
        Err(other) => panic!("expected ShapeMismatch, got {other}"),
        Ok(_) => panic!("a bank of the wrong width must not load"),
    }
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[test]
fn unknown_prompt_is_a_typed_error() -> TestResult {
    let model = HeliosModel::load(common::tiny_model_dir(), &RuntimeConfig::cpu())?;
    match model.new_stream(&StreamConfig::new(PromptWeights::one("no-such-prompt"), 1)) {
        Err(HeliosError::UnknownPrompt { name, known }) => {
            assert_eq!(name, "no-such-prompt");
            assert!(
                known.contains("day"),
                "the message should list known prompts: {known}"
            );
        }
        Err(other) => panic!("expected UnknownPrompt, got {other}"),
        Ok(_) => panic!("an unknown prompt must be rejected"),
    }
    Ok(())
}

#[test]
fn shipped_manifest_is_valid() -> TestResult {
    let m = ModelManifest::load(&common::tiny_model_dir())?;
    assert_eq!((m.height, m.width, m.frames_per_chunk()), (64, 64, 33));
    Ok(())
}

/// Networks whose transformer returns NaN, to check the typed error and that the stream is untouched.
struct NanNets;

impl bevy_helios::core::sampler::Denoiser for NanNets {
    fn velocity(
        &mut self,
        input: &bevy_helios::core::sampler::DenoiserInput<'_>,
    ) -> Result<ndarray::Array5<f32>, HeliosError> {
        Ok(ndarray::Array5::from_elem(input.sample.raw_dim(), f32::NAN))
    }
}

impl bevy_helios::core::sampler::Decoder for NanNets {
    fn decode(
        &mut self,
        _latents: &ndarray::Array5<f32>,
    ) -> Result<ndarray::Array5<f32>, HeliosError> {
        Err(HeliosError::internal("NanNets::decode is never reached"))
    }
}

#[test]
fn non_finite_output_is_a_typed_error_and_keeps_the_stream() -> TestResult {
    let dir = common::tiny_model_dir();
    let manifest = ModelManifest::load(&dir)?;
    let bank = bevy_helios::core::embedding::EmbeddingBank::load(
        &dir.join(&manifest.embeddings.file),
        manifest.embeddings.seq_len,
        manifest.embeddings.dim,
    )?;
    let mut model = HeliosModel::with_networks(manifest, bank, NanNets);
    let mut state = model.new_stream(&StreamConfig::new(PromptWeights::one("day"), 1))?;
    let before = state.clone();
    match model.next_chunk(&mut state) {
        Err(HeliosError::NonFinite { graph, count }) => {
            assert_eq!(graph, "denoiser_stage0");
            assert!(count > 0);
        }
        Err(other) => panic!("expected NonFinite, got {other}"),
        Ok(_) => panic!("NaN output must not produce a chunk"),
    }
    assert_eq!(
        state, before,
        "a failed chunk must leave the stream state as it was"
    );
    Ok(())
}

#[test]
fn tensorrt_without_prepared_engines_is_skipped_with_a_reason() -> TestResult {
    let scratch = std::env::temp_dir().join(format!("helios-trt-chain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    // A regular file where a directory should go: creating the cache directory must fail.
    let blocker = scratch.join("a-file");
    std::fs::write(&blocker, b"not a directory")?;
    let trt = |cache_dir: Option<PathBuf>, build_engines: bool| {
        Provider::TensorRt(TensorRtOptions {
            cache_dir,
            build_engines,
            ..TensorRtOptions::default()
        })
    };
    let config = RuntimeConfig {
        providers: vec![
            trt(None, false),
            trt(Some(scratch.join("empty-cache")), false),
            trt(Some(blocker.join("cache")), true),
            Provider::Cpu,
        ],
        ..RuntimeConfig::default()
    };
    let model = HeliosModel::load(common::tiny_model_dir(), &config)?;
    let report = model.provider();
    assert_eq!(report.active, "CPU", "{report}");
    let reasons: Vec<&str> = report.skipped.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(reasons.len(), 3, "{report}");
    assert!(
        reasons[0].contains("no engine cache directory"),
        "{}",
        reasons[0]
    );
    assert!(
        reasons[1].contains("no prepared engines") && reasons[1].contains("prepare"),
        "an unprepared cache must say to run prepare: {}",
        reasons[1]
    );
    assert!(
        reasons[2].contains("cannot be created"),
        "an unusable cache directory must be reported: {}",
        reasons[2]
    );
    std::fs::remove_dir_all(scratch)?;
    Ok(())
}

#[test]
fn prepare_without_tensorrt_fails_clearly_and_records_nothing() -> TestResult {
    use bevy_helios::core::runtime::prepare::{RECORD_FILE, prepare};
    let cache = std::env::temp_dir().join(format!("helios-prepare-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let config = RuntimeConfig {
        providers: vec![
            Provider::TensorRt(TensorRtOptions {
                cache_dir: Some(cache.clone()),
                ..TensorRtOptions::default()
            }),
            Provider::Cpu,
        ],
        ..RuntimeConfig::default()
    };
    let mut events = Vec::new();
    match prepare(&common::tiny_model_dir(), &config, &mut |e| events.push(e)) {
        Err(HeliosError::ProviderUnavailable { provider, reason }) => {
            assert_eq!(provider, "TensorRT");
            assert!(!reason.is_empty(), "the failure needs a reason");
        }
        Err(other) => panic!("expected ProviderUnavailable, got {other}"),
        Ok(report) => {
            // A machine with TensorRT: the engines were built; nothing else to check here.
            eprintln!("TensorRT present: prepared {} graphs", report.graphs.len());
            return Ok(());
        }
    }
    assert!(
        !cache.join(RECORD_FILE).exists(),
        "a failed prepare must not leave a record that would let TensorRT load"
    );
    assert!(
        events.len() <= 1,
        "it should stop at the first graph: {events:?}"
    );

    let no_trt = RuntimeConfig::cpu();
    match prepare(&common::tiny_model_dir(), &no_trt, &mut |_| {}) {
        Err(HeliosError::Unsupported { what }) => assert!(what.contains("TensorRT"), "{what}"),
        Err(other) => panic!("a chain without TensorRT should be Unsupported, got {other}"),
        Ok(_) => panic!("prepare must refuse a chain without TensorRT"),
    }
    let _ = std::fs::remove_dir_all(cache);
    Ok(())
}

#[test]
fn per_graph_options_parse_and_resolve() -> TestResult {
    let config: RuntimeConfig = ron::from_str(
        r#"(
            providers: [Cuda((tf32: false)), Cpu],
            device_loop: On,
            graphs: {
                "denoiser_*": (cuda_graph: Some(true)),
                "denoiser_stage2": (cuda_graph: Some(false)),
                "dmd_step_*": (tf32: Some(true)),
                "vae_decoder_rgba8": (tf32: Some(false)),
            },
        )"#,
    )?;
    let cuda = &config.providers[0];
    // (TF32, CUDA graph)
    assert_eq!(config.graph_choice(cuda, "denoiser_stage0"), (false, true));
    assert_eq!(
        config.graph_choice(cuda, "denoiser_stage2"),
        (false, false),
        "an exact key beats a prefix"
    );
    assert_eq!(config.graph_choice(cuda, "dmd_step_stage1"), (true, false));
    assert_eq!(
        config.graph_choice(cuda, "vae_decoder"),
        (true, false),
        "the f32 VAE gets TF32 by default, like the reference's cuDNN convolutions"
    );
    assert_eq!(
        config.graph_choice(cuda, "vae_decoder_rgba8"),
        (false, false),
        "configuration overrides the built-in choice"
    );
    assert_eq!(config.graph_choice(cuda, "history_push"), (false, false));
    assert_eq!(
        config.graph_choice(&Provider::Cpu, "vae_decoder"),
        (false, false),
        "the CPU has neither"
    );
    let trt = Provider::TensorRt(TensorRtOptions::default());
    assert_eq!(
        RuntimeConfig::default().graph_choice(&trt, "vae_encoder_clip"),
        (true, false)
    );
    assert!(
        ron::from_str::<RuntimeConfig>(r#"(graphs: { "vae_*": (tf33: Some(true)) })"#).is_err(),
        "a misspelt option must not parse"
    );
    Ok(())
}

#[test]
fn cuda_arenas_grow_exactly_unless_configured_otherwise() -> TestResult {
    let Provider::Cuda(defaults) =
        &ron::from_str::<RuntimeConfig>("(providers: [Cuda(())])")?.providers[0]
    else {
        return Err("expected a CUDA provider".into());
    };
    assert!(
        defaults.arena_exact_growth,
        "exact growth is the default (lower peak, same speed)"
    );
    assert_eq!(defaults, &CudaOptions::default());
    let Provider::Cuda(doubling) =
        &ron::from_str::<RuntimeConfig>("(providers: [Cuda((arena_exact_growth: false))])")?
            .providers[0]
    else {
        return Err("expected a CUDA provider".into());
    };
    assert!(!doubling.arena_exact_growth);
    Ok(())
}

/// Set in the child process of [`onnx_runtime_comes_from_beside_the_binary_with_no_python`].
const NO_PYTHON_CHILD: &str = "HELIOS_TEST_NO_PYTHON_CHILD";

/// A game finds ONNX Runtime beside its executable (build.rs put it beside this test binary) and needs
/// neither Python nor the network: rerun in a child with an empty `PATH`, no `HOME` and no cache, the tiny
/// model still loads on the CPU and the library is the one beside the binary.
#[test]
fn onnx_runtime_comes_from_beside_the_binary_with_no_python() -> TestResult {
    if std::env::var_os(NO_PYTHON_CHILD).is_some() {
        let lib = bevy_helios::core::runtime::dylib::locate()?;
        assert_eq!(
            lib.source,
            bevy_helios::core::runtime::OrtSource::BesideExecutable,
            "the library should be found beside the binary, found {}",
            lib.path.display()
        );
        let mut model = HeliosModel::load(common::tiny_model_dir(), &RuntimeConfig::cpu())?;
        let mut stream = model.new_stream(&StreamConfig::new(PromptWeights::one("day"), 1))?;
        model.next_chunk(&mut stream)?;
        return Ok(());
    }
    if std::env::var_os("ORT_DYLIB_PATH").is_some() {
        eprintln!("ORT_DYLIB_PATH is set: build.rs placed nothing, skipping");
        return Ok(());
    }
    let name = "onnx_runtime_comes_from_beside_the_binary_with_no_python";
    let out = std::process::Command::new(std::env::current_exe()?)
        .args([name, "--exact", "--test-threads=1"])
        .env(NO_PYTHON_CHILD, "1")
        .env("PATH", "")
        .env_remove("HOME")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("HELIOS_ORT_CACHE")
        .env_remove("LD_LIBRARY_PATH")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the model should load with no Python on PATH and no cache:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
