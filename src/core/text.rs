//! Free-text prompts: [`TextEncoder`] turns any text into a prompt embedding at run time, so a model
//! whose manifest has a `text_encoder` takes prompts that are not in its bank
//! (`PromptWeights::one("a snowy forest at night")`).
//!
//! The encoder is two files of the model directory: a Hugging Face `tokenizer.json`, read with the
//! `tokenizers` crate, and an ONNX graph `(input_ids, attention_mask) [1, L] int64 -> embedding [1, D]
//! f32` with pooling and normalisation inside (`tools/text/export_text_encoder.py`; all-MiniLM-L6-v2
//! for helios-nano). It runs on the CPU provider of the shared ONNX Runtime environment, on the worker
//! thread like the rest of the model, and keeps the last [`TextEncoder::CACHE_CAPACITY`] embeddings.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use ndarray::Array2;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{Tensor, TensorElementType, ValueType};
use tokenizers::{Tokenizer, TruncationParams};

use crate::core::embedding::{EmbeddingBank, PromptSource, PromptWeights};
use crate::core::graph_contract::{key, port};
use crate::core::manifest::TextEncoderSpec;
use crate::core::runtime::session::check_file;
use crate::error::HeliosError;

/// Graph key used in errors about the text encoder.
const GRAPH: &str = key::TEXT_ENCODER;

/// A sentence encoder: tokenizer plus ONNX graph, with a small cache of embedded texts.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    session: Session,
    path: PathBuf,
    max_tokens: usize,
    dim: usize,
    cache: EmbeddingCache,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder")
            .field("path", &self.path)
            .field("max_tokens", &self.max_tokens)
            .field("dim", &self.dim)
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl TextEncoder {
    /// How many embedded texts are kept (least recently used go first).
    pub const CACHE_CAPACITY: usize = 64;

    /// Loads the encoder a manifest names in `dir`, checking both files' SHA-256 when `verify_hashes`.
    pub fn from_manifest(
        dir: &Path,
        spec: &TextEncoderSpec,
        verify_hashes: bool,
        intra_threads: Option<usize>,
    ) -> Result<Self, HeliosError> {
        let graph = dir.join(&spec.file);
        let tokenizer = dir.join(&spec.tokenizer);
        check_file(&graph, &spec.sha256, verify_hashes)?;
        check_file(&tokenizer, &spec.tokenizer_sha256, verify_hashes)?;
        Self::load(&graph, &tokenizer, spec.max_tokens, intra_threads)
    }

    /// Loads `graph` (ONNX) and `tokenizer` (`tokenizer.json`); texts are cut to `max_tokens` tokens,
    /// the special tokens included. `intra_threads`: CPU threads (None: ONNX Runtime's default).
    pub fn load(
        graph: &Path,
        tokenizer: &Path,
        max_tokens: usize,
        intra_threads: Option<usize>,
    ) -> Result<Self, HeliosError> {
        if max_tokens < 2 {
            return Err(HeliosError::Unsupported {
                what: format!("text encoder max_tokens {max_tokens}: no room for a word"),
            });
        }
        let mut tok = Tokenizer::from_file(tokenizer).map_err(|e| HeliosError::ModelCorrupt {
            path: tokenizer.to_path_buf(),
            reason: format!("not a tokenizers tokenizer.json: {e}"),
        })?;
        // One text per run: no padding, and truncation at our limit whatever the file says.
        tok.with_padding(None);
        tok.with_truncation(Some(TruncationParams {
            max_length: max_tokens,
            ..TruncationParams::default()
        }))
        .map_err(|e| HeliosError::ModelCorrupt {
            path: tokenizer.to_path_buf(),
            reason: format!("truncation at {max_tokens} tokens: {e}"),
        })?;
        let session = build_session(graph, intra_threads)?;
        let dim = check_signature(&session)?;
        Ok(Self {
            tokenizer: tok,
            session,
            path: graph.to_path_buf(),
            max_tokens,
            dim,
            cache: EmbeddingCache::new(Self::CACHE_CAPACITY),
        })
    }

    /// Width of an embedding (384 for all-MiniLM-L6-v2).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Longest token sequence fed to the graph; longer texts are cut.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The graph file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token ids and attention mask of `text` as the graph gets them: `[CLS] … [SEP]`, at most
    /// [`Self::max_tokens`]. An empty or whitespace-only text is [`HeliosError::EmptyPrompt`].
    pub fn tokenize(&self, text: &str) -> Result<(Vec<i64>, Vec<i64>), HeliosError> {
        if text.trim().is_empty() {
            return Err(HeliosError::EmptyPrompt);
        }
        let encoding = self.tokenizer.encode(text, true).map_err(|e| {
            HeliosError::internal(format!("tokenizing `{}`: {e}", crate::error::echo(text)))
        })?;
        let ids: Vec<i64> = encoding.get_ids().iter().map(|&i| i64::from(i)).collect();
        let mask: Vec<i64> = encoding
            .get_attention_mask()
            .iter()
            .map(|&m| i64::from(m))
            .collect();
        Ok((ids, mask))
    }

    /// Checks that `text` can be embedded (not empty, tokenizes) without running the graph.
    pub fn check(&self, text: &str) -> Result<(), HeliosError> {
        self.tokenize(text).map(|_| ())
    }

    /// The embedding of `text`, `[1, dim]` (unit length for all-MiniLM-L6-v2); cached by exact text.
    pub fn embed(&mut self, text: &str) -> Result<Array2<f32>, HeliosError> {
        if let Some(hit) = self.cache.get(text) {
            return Ok(hit.clone());
        }
        let (ids, mask) = self.tokenize(text)?;
        let _span = tracing::debug_span!("helios_text_embed", tokens = ids.len()).entered();
        let err = |e: ort::Error| HeliosError::inference(GRAPH, e);
        let shape = [1usize, ids.len()];
        let outputs = self
            .session
            .run(ort::inputs![
                port::INPUT_IDS => Tensor::from_array((shape, ids)).map_err(err)?,
                port::ATTENTION_MASK => Tensor::from_array((shape, mask)).map_err(err)?,
            ])
            .map_err(err)?;
        let value = outputs
            .get(port::EMBEDDING)
            .ok_or_else(|| HeliosError::ManifestMismatch {
                graph: GRAPH.into(),
                reason: "output `embedding` missing at run time".into(),
            })?;
        let arr = value.try_extract_array::<f32>().map_err(err)?;
        if arr.shape() != [1, self.dim] {
            return Err(HeliosError::ShapeMismatch {
                what: "text encoder output `embedding`".into(),
                expected: vec![1, self.dim],
                actual: arr.shape().to_vec(),
            });
        }
        let bad = arr.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(HeliosError::NonFinite {
                graph: GRAPH.into(),
                count: bad,
            });
        }
        let emb = Array2::from_shape_vec((1, self.dim), arr.iter().copied().collect())
            .expect("shape checked above");
        drop(outputs);
        self.cache.insert(text.to_string(), emb.clone());
        Ok(emb)
    }
}

fn build_session(path: &Path, intra_threads: Option<usize>) -> Result<Session, HeliosError> {
    if !path.exists() {
        return Err(HeliosError::ModelMissing {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let env = crate::core::runtime::environment()?;
    let corrupt = |reason: String| HeliosError::ModelCorrupt {
        path: path.to_path_buf(),
        reason,
    };
    // No execution provider registered: ONNX Runtime's CPU provider, whatever the model's chain is.
    let mut builder = Session::builder(&env)
        .map_err(|e| corrupt(e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| corrupt(e.to_string()))?;
    if let Some(n) = intra_threads {
        builder = builder
            .with_intra_threads(n)
            .map_err(|e| corrupt(e.to_string()))?;
    }
    builder
        .commit_from_file(path)
        .map_err(|e| corrupt(e.to_string()))
}

/// Checks the graph's interface; returns the embedding width.
fn check_signature(session: &Session) -> Result<usize, HeliosError> {
    let mismatch = |reason: String| HeliosError::ManifestMismatch {
        graph: GRAPH.into(),
        reason,
    };
    for name in [port::INPUT_IDS, port::ATTENTION_MASK] {
        let input = session
            .inputs()
            .iter()
            .find(|i| i.name() == name)
            .ok_or_else(|| mismatch(format!("the graph has no input `{name}`")))?;
        match input.dtype() {
            ValueType::Tensor { ty, shape, .. }
                if *ty == TensorElementType::Int64 && shape.len() == 2 => {}
            other => {
                return Err(mismatch(format!(
                    "input `{name}` is {other:?}, expected int64 [1, tokens]"
                )));
            }
        }
    }
    if session.inputs().len() != 2 {
        return Err(mismatch(format!(
            "{} inputs, expected input_ids and attention_mask",
            session.inputs().len()
        )));
    }
    let output = session
        .outputs()
        .iter()
        .find(|o| o.name() == port::EMBEDDING)
        .ok_or_else(|| mismatch("the graph has no output `embedding`".into()))?;
    match output.dtype() {
        ValueType::Tensor { ty, shape, .. }
            if *ty == TensorElementType::Float32 && shape.len() == 2 && shape[1] > 0 =>
        {
            Ok(shape[1] as usize)
        }
        other => Err(mismatch(format!(
            "output `embedding` is {other:?}, expected float32 [1, dim] with a fixed dim"
        ))),
    }
}

/// Least-recently-used map from text to embedding.
#[derive(Debug)]
struct EmbeddingCache {
    capacity: usize,
    entries: HashMap<String, Array2<f32>>,
    order: VecDeque<String>,
}

impl EmbeddingCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn get(&mut self, key: &str) -> Option<&Array2<f32>> {
        let pos = self.order.iter().position(|k| k == key)?;
        let k = self.order.remove(pos).expect("position is in range");
        self.order.push_back(k);
        self.entries.get(key)
    }

    fn insert(&mut self, key: String, value: Array2<f32>) {
        if self.entries.contains_key(&key) {
            return;
        }
        while self.entries.len() >= self.capacity {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.entries.remove(&old);
        }
        self.order.push_back(key.clone());
        self.entries.insert(key, value);
    }
}

/// Prompt keys resolved against a model's bank first, then, with an encoder, embedded as free text.
/// Without an encoder an unknown key is the bank's [`HeliosError::UnknownPrompt`].
pub struct PromptResolver<'a> {
    bank: &'a EmbeddingBank,
    text: Option<&'a mut TextEncoder>,
}

impl<'a> PromptResolver<'a> {
    /// A resolver over `bank` and an optional encoder (whose `dim` must match the bank's).
    pub fn new(bank: &'a EmbeddingBank, text: Option<&'a mut TextEncoder>) -> Self {
        Self { bank, text }
    }
}

/// Checks prompt weights against a bank and an optional encoder without running it: a positive total,
/// and every key a bank name or (with an encoder) text that tokenizes.
pub fn check_prompt(
    bank: &EmbeddingBank,
    text: Option<&TextEncoder>,
    weights: &PromptWeights,
) -> Result<(), HeliosError> {
    weights.total()?;
    weights
        .0
        .keys()
        .try_for_each(|key| check_key(bank, text, key))
}

fn check_key(
    bank: &EmbeddingBank,
    text: Option<&TextEncoder>,
    key: &str,
) -> Result<(), HeliosError> {
    match text {
        Some(text) if !bank.contains(key) => text.check(key),
        _ => bank.get(key).map(|_| ()),
    }
}

impl PromptSource for PromptResolver<'_> {
    fn shape(&self) -> (usize, usize) {
        self.bank.shape()
    }

    fn embedding(&mut self, key: &str) -> Result<Cow<'_, Array2<f32>>, HeliosError> {
        if self.bank.contains(key) {
            return self.bank.get(key).map(Cow::Borrowed);
        }
        match self.text.as_deref_mut() {
            Some(text) => text.embed(key).map(Cow::Owned),
            None => self.bank.get(key).map(Cow::Borrowed),
        }
    }

    fn check(&self, key: &str) -> Result<(), HeliosError> {
        check_key(self.bank, self.text.as_deref(), key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiny random-weight encoder of `tools/text/export_text_encoder.py --tiny` (dim 16).
    fn tiny_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text_encoder/tiny")
    }

    fn tiny(max_tokens: usize) -> TextEncoder {
        let dir = tiny_dir();
        TextEncoder::load(
            &dir.join("text_encoder.onnx"),
            &dir.join("tokenizer.json"),
            max_tokens,
            Some(1),
        )
        .expect("the tiny encoder in tests/fixtures/text_encoder/tiny should load")
    }

    fn cosine(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let n = |v: &Array2<f32>| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (n(a) * n(b))
    }

    #[test]
    fn tiny_encoder_matches_its_torch_reference() {
        let mut enc = tiny(128);
        assert_eq!(enc.dim(), 16);
        let path = tiny_dir().join("reference.safetensors");
        let reference = EmbeddingBank::load(&path, 1, 16).expect("reference fixture");
        let names: Vec<String> = reference.names().map(str::to_string).collect();
        assert!(names.len() >= 5, "the fixture has the test sentences");
        for name in names {
            let text = reference
                .text(&name)
                .expect("sentence in metadata")
                .to_string();
            let got = enc.embed(&text).unwrap();
            let want = reference.get(&name).unwrap();
            let max_err = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                cosine(&got, want) > 0.99999 && max_err < 1e-4,
                "the fp32 tiny graph should reproduce torch for {text:?}: cosine {}, max err {max_err}",
                cosine(&got, want)
            );
            let norm = got.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!(
                (norm - 1.0).abs() < 1e-5,
                "embeddings are L2-normalised, got {norm}"
            );
        }
    }

    #[test]
    fn long_text_is_cut_to_max_tokens() {
        let enc = tiny(8);
        let (ids, mask) = enc.tokenize(&"snow ".repeat(100)).unwrap();
        assert_eq!(
            ids.len(),
            8,
            "truncated to max_tokens, special tokens included"
        );
        assert_eq!(mask, vec![1; 8], "no padding: every token is attended");
        let (short, _) = enc.tokenize("snow").unwrap();
        assert_eq!(
            (ids[0], ids[7]),
            (short[0], short[short.len() - 1]),
            "the cut text still starts with [CLS] and ends with [SEP]"
        );
        let mut enc = tiny(8);
        enc.embed(&"snow ".repeat(100))
            .expect("a text longer than max_tokens still embeds");
    }

    #[test]
    fn empty_prompt_is_a_typed_error() {
        let mut enc = tiny(128);
        for text in ["", "   ", "\n\t "] {
            assert!(
                matches!(enc.embed(text), Err(HeliosError::EmptyPrompt)),
                "{text:?} should be EmptyPrompt"
            );
        }
    }

    #[test]
    fn embeddings_are_cached_by_text() {
        let mut enc = tiny(128);
        let a = enc.embed("a snowy forest at night").unwrap();
        let b = enc.embed("a snowy forest at night").unwrap();
        assert_eq!(a, b);
        assert_eq!(enc.cache.len(), 1, "the second call should hit the cache");
        let c = enc.embed("a city in the rain").unwrap();
        assert!(
            cosine(&a, &c) < 0.9999,
            "different texts give different embeddings"
        );
        assert_eq!(enc.cache.len(), 2);
    }

    #[test]
    fn missing_files_and_wrong_graphs_are_typed_errors() {
        let dir = tiny_dir();
        let err = TextEncoder::load(
            &dir.join("nope.onnx"),
            &dir.join("tokenizer.json"),
            128,
            None,
        )
        .unwrap_err();
        assert!(matches!(err, HeliosError::ModelMissing { .. }), "{err}");
        let err = TextEncoder::load(
            &dir.join("text_encoder.onnx"),
            &dir.join("text_encoder.onnx"),
            128,
            None,
        )
        .unwrap_err();
        assert!(
            matches!(err, HeliosError::ModelCorrupt { .. }),
            "an ONNX file is not a tokenizer.json: {err}"
        );
        // A graph of another interface (the helios-tiny VAE decoder) is refused with the reason.
        let decoder =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/helios-tiny/vae_decoder.onnx");
        let err = TextEncoder::load(&decoder, &dir.join("tokenizer.json"), 128, None).unwrap_err();
        assert!(
            matches!(&err, HeliosError::ManifestMismatch { graph, reason } if graph == "text_encoder" && reason.contains("input_ids")),
            "{err}"
        );
    }

    #[test]
    fn manifest_hashes_are_checked() {
        let spec = TextEncoderSpec {
            file: "text_encoder.onnx".into(),
            tokenizer: "tokenizer.json".into(),
            sha256: "00".repeat(32),
            tokenizer_sha256: String::new(),
            max_tokens: 128,
        };
        let err = TextEncoder::from_manifest(&tiny_dir(), &spec, true, None).unwrap_err();
        assert!(
            matches!(&err, HeliosError::ModelCorrupt { reason, .. } if reason.contains("SHA-256")),
            "a wrong hash should be ModelCorrupt: {err}"
        );
        TextEncoder::from_manifest(&tiny_dir(), &spec, false, None)
            .expect("with verify_hashes off the hash is not read");
    }

    #[test]
    fn cache_evicts_least_recently_used() {
        let mut c = EmbeddingCache::new(2);
        let e = |v: f32| Array2::from_elem((1, 2), v);
        c.insert("a".into(), e(1.0));
        c.insert("b".into(), e(2.0));
        assert!(c.get("a").is_some(), "a was inserted");
        c.insert("c".into(), e(3.0));
        assert!(
            c.get("b").is_none(),
            "b was least recently used and should be evicted"
        );
        assert_eq!(c.get("a").map(|v| v[[0, 0]]), Some(1.0));
        assert_eq!(c.get("c").map(|v| v[[0, 0]]), Some(3.0));
        assert_eq!(c.len(), 2);
    }
}
