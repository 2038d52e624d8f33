//! Free-text prompts: the MiniLM text encoder against the Python reference, free text through
//! `HeliosModel` with and without an encoder, and the manifest checks. Engine-free: runs with
//! `--no-default-features`.
//!
//! Most tests use the tiny random-weight encoder in `tests/fixtures/text_encoder/tiny` (dim 16) and fake
//! networks. `minilm_matches_the_python_reference` needs `models/helios-nano/text_encoder.onnx` and
//! `helios_nano_takes_free_text_prompts` the whole helios-nano model; both fail (not skip) without them.

use std::path::{Path, PathBuf};

use bevy_helios::core::embedding::EmbeddingBank;
use bevy_helios::core::manifest::{ModelManifest, TextEncoderSpec};
use bevy_helios::core::model::HeliosModel;
use bevy_helios::core::sampler::{Decoder, Denoiser, DenoiserInput};
use bevy_helios::core::text::TextEncoder;
use bevy_helios::prelude::*;
use ndarray::{Array2, Array5};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SNOW: &str = "a snowy forest at night";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tiny_dir() -> PathBuf {
    root().join("tests/fixtures/text_encoder/tiny")
}

fn tiny_encoder() -> Result<TextEncoder, HeliosError> {
    let dir = tiny_dir();
    TextEncoder::load(
        &dir.join("text_encoder.onnx"),
        &dir.join("tokenizer.json"),
        128,
        Some(1),
    )
}

fn cosine(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &Array2<f32>| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

/// Networks that cost nothing but show the prompt: the denoiser remembers the first value of the
/// prompt embedding it was given and the decoder paints it.
struct Fake {
    frames: usize,
    height: usize,
    width: usize,
    seen: f32,
}

impl Denoiser for Fake {
    fn velocity(&mut self, input: &DenoiserInput<'_>) -> Result<Array5<f32>, HeliosError> {
        self.seen = input.text[[0, 0, 0]];
        Ok(input.sample.mapv(|v| v * 0.5))
    }
}

impl Decoder for Fake {
    fn decode(&mut self, _latents: &Array5<f32>) -> Result<Array5<f32>, HeliosError> {
        Ok(Array5::from_elem(
            (1, 3, self.frames, self.height, self.width),
            (self.seen * 4.0).tanh(),
        ))
    }
}

/// helios-tiny's manifest with one-token prompts of width 16, the bank being the tiny encoder's
/// reference fixture (`s0` = the embedding of [`SNOW`], …), and fake networks.
fn one_token_model() -> Result<HeliosModel<Fake>, Box<dyn std::error::Error>> {
    let mut manifest = ModelManifest::load(&root().join("models/helios-tiny"))?;
    manifest.embeddings.seq_len = 1;
    manifest.embeddings.dim = 16;
    let bank = EmbeddingBank::load(&tiny_dir().join("reference.safetensors"), 1, 16)?;
    assert_eq!(bank.text("s0"), Some(SNOW), "fixture order");
    let nets = Fake {
        frames: manifest.frames_per_chunk(),
        height: manifest.height,
        width: manifest.width,
        seen: 0.0,
    };
    Ok(HeliosModel::with_networks(manifest, bank, nets))
}

#[test]
fn minilm_matches_the_python_reference() -> TestResult {
    let dir = root().join("models/helios-nano");
    for file in ["text_encoder.onnx", "tokenizer.json"] {
        assert!(
            dir.join(file).exists(),
            "{} is missing: make it with `tools/.venv/bin/python tools/text/export_text_encoder.py --out \
             models/helios-nano` (tools/README.md)",
            dir.join(file).display()
        );
    }
    let mut enc = TextEncoder::load(
        &dir.join("text_encoder.onnx"),
        &dir.join("tokenizer.json"),
        128,
        None,
    )?;
    assert_eq!(enc.dim(), 384, "all-MiniLM-L6-v2 embeddings are 384 wide");
    let reference = EmbeddingBank::load(
        &root().join("tests/fixtures/text_encoder/reference.safetensors"),
        1,
        384,
    )?;
    let names: Vec<String> = reference.names().map(str::to_string).collect();
    assert!(names.len() >= 5, "the fixture holds the test sentences");
    for name in names {
        let text = reference.text(&name).ok_or("sentence missing")?.to_string();
        let got = enc.embed(&text)?;
        let c = cosine(&got, reference.get(&name)?);
        // the export measured min 0.99837 over 200 sentences for the int8 graph
        assert!(
            c >= 0.995,
            "the ONNX encoder should match torch fp32 for {text:?}: cosine {c}"
        );
    }
    Ok(())
}

#[test]
fn free_text_prompts_run_through_the_model() -> TestResult {
    let mut model = one_token_model()?.with_text_encoder(tiny_encoder()?)?;
    assert!(model.text_encoder().is_some());
    // free text is the same function as the bank: "a snowy forest at night" == bank entry s0
    let free = model.embed_prompt(&PromptWeights::one(SNOW))?;
    let named = model.embed_prompt(&PromptWeights::one("s0"))?;
    let err = free
        .iter()
        .zip(&named)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        err < 1e-5,
        "free text should embed like the bank entry made from the same text (max err {err})"
    );

    let mut snow = model.new_stream(&StreamConfig::new(PromptWeights::one(SNOW), 1))?;
    let chunk = model.next_chunk(&mut snow)?;
    assert_eq!(chunk.prompt, PromptWeights::one(SNOW));
    let mut city = model.new_stream(&StreamConfig::new(
        PromptWeights::one("a city in the rain"),
        1,
    ))?;
    let other = model.next_chunk(&mut city)?;
    assert_ne!(
        other.frames[0][..4],
        chunk.frames[0][..4],
        "different texts should give different frames"
    );

    // blends of bank names and free text, and changing to free text mid-stream
    let blend = PromptWeights::one("s3").with(SNOW, 0.5);
    let mut mixed = model.new_stream(&StreamConfig::new(blend.clone(), 2))?;
    assert_eq!(model.next_chunk(&mut mixed)?.prompt, blend);
    mixed.set_prompt(PromptWeights::one("fog over a lake"));
    model.next_chunk(&mut mixed)?;
    Ok(())
}

#[test]
fn free_text_without_an_encoder_is_an_unknown_prompt() -> TestResult {
    let model = one_token_model()?;
    let err = model
        .new_stream(&StreamConfig::new(PromptWeights::one(SNOW), 1))
        .unwrap_err();
    assert!(
        matches!(&err, HeliosError::UnknownPrompt { name, .. } if name == SNOW),
        "without a text encoder free text should stay an unknown prompt: {err}"
    );
    assert!(err.to_string().contains("text encoder"), "{err}");
    model.check_prompt(&PromptWeights::one("s2"))?;
    Ok(())
}

#[test]
fn empty_free_text_is_a_typed_error() -> TestResult {
    let model = one_token_model()?.with_text_encoder(tiny_encoder()?)?;
    for weights in [
        PromptWeights::one("  "),
        PromptWeights::one("s1").with("", 0.3),
    ] {
        let err = model
            .new_stream(&StreamConfig::new(weights.clone(), 1))
            .unwrap_err();
        assert!(
            matches!(err, HeliosError::EmptyPrompt),
            "{weights:?} should fail with EmptyPrompt, got {err}"
        );
    }
    Ok(())
}

#[test]
fn an_encoder_of_another_width_is_refused() -> TestResult {
    // helios-tiny takes [16, 32] prompts; the tiny encoder gives [1, 16]
    let manifest = ModelManifest::load(&root().join("models/helios-tiny"))?;
    let bank = EmbeddingBank::load(
        &root().join("models/helios-tiny/embeddings.safetensors"),
        16,
        32,
    )?;
    let nets = Fake {
        frames: 33,
        height: 64,
        width: 64,
        seen: 0.0,
    };
    let err = HeliosModel::with_networks(manifest, bank, nets)
        .with_text_encoder(tiny_encoder()?)
        .err()
        .ok_or("a [1, 16] encoder on a [16, 32] model should be refused")?;
    assert!(
        matches!(&err, HeliosError::ManifestMismatch { graph, reason }
            if graph == "text_encoder" && reason.contains("[1, 16]") && reason.contains("[16, 32]")),
        "{err}"
    );
    Ok(())
}

#[test]
fn manifest_text_encoder_is_validated() -> TestResult {
    // helios-tiny with a text encoder added: its 16-row prompts cannot take one-token embeddings
    let dir = std::env::temp_dir().join(format!("helios-test-text-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let text = std::fs::read_to_string(root().join("models/helios-tiny/manifest.ron"))?;
    let at = text.find("    graphs: {").ok_or("graphs field")?;
    let entry = "    text_encoder: Some((\n        file: \"text_encoder.onnx\",\n        tokenizer: \
                 \"tokenizer.json\",\n        sha256: \"\",\n        tokenizer_sha256: \"\",\n        \
                 max_tokens: 128,\n    )),\n";
    std::fs::write(
        dir.join("manifest.ron"),
        format!("{}{entry}{}", &text[..at], &text[at..]),
    )?;
    let err = ModelManifest::load(&dir).unwrap_err();
    assert!(
        matches!(&err, HeliosError::ManifestInvalid { reason, .. } if reason.contains("seq_len is 16 (must be 1)")),
        "{err}"
    );
    // an encoder the manifest names but the directory lacks
    let spec = TextEncoderSpec {
        file: "text_encoder.onnx".into(),
        tokenizer: "tokenizer.json".into(),
        sha256: String::new(),
        tokenizer_sha256: String::new(),
        max_tokens: 128,
    };
    let err = TextEncoder::from_manifest(&dir, &spec, true, None).unwrap_err();
    assert!(
        matches!(&err, HeliosError::ModelMissing { path, .. } if path.ends_with("text_encoder.onnx")),
        "{err}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn helios_nano_takes_free_text_prompts() -> TestResult {
    let dir: &Path = &root().join("models/helios-nano");
    assert!(
        dir.join("manifest.ron").exists(),
        "models/helios-nano/manifest.ron is missing (export helios-nano with `export.py ... --text-encoder \
         minilm --text-encoder-dir models/helios-nano`)"
    );
    let mut model = HeliosModel::load(dir, &RuntimeConfig::cpu())?;
    assert!(
        model.text_encoder().is_some(),
        "helios-nano's manifest should record its text encoder (export.py --text-encoder-dir)"
    );
    let mut state = model.new_stream(&StreamConfig::new(PromptWeights::one(SNOW), 3))?;
    let chunk = model.next_chunk(&mut state)?;
    assert_eq!(chunk.frames.len(), model.manifest().frames_per_chunk());
    Ok(())
}
