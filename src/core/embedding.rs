//! Prompt embeddings: the bank shipped with a model, weighted blends of named prompts, and the
//! crossfade between chunks when the blend changes. Free text (a model with a text encoder) comes in
//! through [`PromptSource`]; see [`crate::core::text`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use ndarray::{Array2, Array3, Axis};
use serde::{Deserialize, Serialize};

use crate::error::{HeliosError, echo};

/// Prompt-name → `[S, D]` embedding, loaded from a model's `embeddings.safetensors`.
#[derive(Clone, Debug)]
pub struct EmbeddingBank {
    seq_len: usize,
    dim: usize,
    entries: BTreeMap<String, Array2<f32>>,
    texts: BTreeMap<String, String>,
}

impl EmbeddingBank {
    /// Loads a bank and checks every entry is `[seq_len, dim]` f32.
    pub fn load(path: &Path, seq_len: usize, dim: usize) -> Result<Self, HeliosError> {
        let bytes = std::fs::read(path).map_err(|source| HeliosError::ModelMissing {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path, seq_len, dim)
    }

    /// Parses safetensors bytes (`path` is only for messages).
    pub fn from_bytes(
        bytes: &[u8],
        path: &Path,
        seq_len: usize,
        dim: usize,
    ) -> Result<Self, HeliosError> {
        let corrupt = |reason: String| HeliosError::ModelCorrupt {
            path: path.to_path_buf(),
            reason,
        };
        let tensors = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| corrupt(format!("not a safetensors file: {e}")))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| corrupt(format!("bad safetensors header: {e}")))?;
        let texts: BTreeMap<String, String> = meta
            .metadata()
            .clone()
            .map(|m| m.into_iter().collect())
            .unwrap_or_default();
        let mut entries = BTreeMap::new();
        for (name, view) in tensors.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(corrupt(format!(
                    "entry `{name}` is {:?}, expected F32",
                    view.dtype()
                )));
            }
            let shape = view.shape().to_vec();
            if shape != [seq_len, dim] {
                return Err(HeliosError::ShapeMismatch {
                    what: format!("embedding `{name}` in {}", path.display()),
                    expected: vec![seq_len, dim],
                    actual: shape,
                });
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let arr = Array2::from_shape_vec((seq_len, dim), values)
                .map_err(|e| corrupt(format!("entry `{name}`: {e}")))?;
            entries.insert(name, arr);
        }
        if entries.is_empty() {
            return Err(corrupt("the bank has no prompts".into()));
        }
        Ok(Self {
            seq_len,
            dim,
            entries,
            texts,
        })
    }

    /// Prompt names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The prompt text a name was embedded from, if recorded.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.texts.get(name).map(String::as_str)
    }

    /// Whether `name` is in the bank.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// One entry.
    pub fn get(&self, name: &str) -> Result<&Array2<f32>, HeliosError> {
        self.entries
            .get(name)
            .ok_or_else(|| HeliosError::UnknownPrompt {
                name: echo(name),
                known: echo(&self.names().take(24).collect::<Vec<_>>().join(", ")),
            })
    }

    /// `[seq_len, dim]`.
    pub fn shape(&self) -> (usize, usize) {
        (self.seq_len, self.dim)
    }

    /// The weighted mean of named prompts, `[1, S, D]`. Weights are normalised to sum to 1.
    pub fn blend(&self, weights: &PromptWeights) -> Result<Array3<f32>, HeliosError> {
        blend(&mut &*self, weights)
    }
}

/// Where the embedding of a prompt key comes from: a bank of named prompts, or a bank plus a text
/// encoder for free text ([`crate::core::text::PromptResolver`]).
pub trait PromptSource {
    /// `[seq_len, dim]` of every embedding.
    fn shape(&self) -> (usize, usize);
    /// The `[seq_len, dim]` embedding of `key`, or why there is none (e.g. [`HeliosError::UnknownPrompt`]).
    fn embedding(&mut self, key: &str) -> Result<Cow<'_, Array2<f32>>, HeliosError>;
    /// Whether `key` would resolve, without computing anything expensive.
    fn check(&self, key: &str) -> Result<(), HeliosError>;
}

impl PromptSource for &EmbeddingBank {
    fn shape(&self) -> (usize, usize) {
        EmbeddingBank::shape(self)
    }

    fn embedding(&mut self, key: &str) -> Result<Cow<'_, Array2<f32>>, HeliosError> {
        self.get(key).map(Cow::Borrowed)
    }

    fn check(&self, key: &str) -> Result<(), HeliosError> {
        self.get(key).map(|_| ())
    }
}

/// The weighted mean of the embeddings of `weights`' keys, `[1, S, D]`; weights normalised to sum to 1.
pub fn blend(
    source: &mut dyn PromptSource,
    weights: &PromptWeights,
) -> Result<Array3<f32>, HeliosError> {
    let total = weights.total()?;
    let (seq_len, dim) = source.shape();
    let mut out = Array2::<f32>::zeros((seq_len, dim));
    for (name, w) in &weights.0 {
        if *w <= 0.0 {
            source.check(name)?; // still report unknown names with zero weight
            continue;
        }
        let emb = source.embedding(name)?;
        if emb.dim() != (seq_len, dim) {
            return Err(HeliosError::ShapeMismatch {
                what: format!("embedding of prompt `{name}`"),
                expected: vec![seq_len, dim],
                actual: emb.shape().to_vec(),
            });
        }
        out.scaled_add(*w / total, &emb);
    }
    Ok(out.insert_axis(Axis(0)))
}

/// Weights over prompts: names of a model's bank or, for a model with a text encoder, any text
/// (see [`crate::core::text`]). A single prompt is `PromptWeights::one("day")`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
// Reflect only with the Bevy layer: the core itself never needs Bevy.
#[cfg_attr(feature = "plugin", derive(bevy::reflect::Reflect))]
pub struct PromptWeights(pub BTreeMap<String, f32>);

impl PromptWeights {
    /// All weight on one prompt.
    pub fn one(name: impl Into<String>) -> Self {
        Self(BTreeMap::from([(name.into(), 1.0)]))
    }

    /// Adds (or replaces) a weight; builder style.
    pub fn with(mut self, name: impl Into<String>, weight: f32) -> Self {
        self.0.insert(name.into(), weight);
        self
    }

    /// Sum of the weights after [`Self::validate`].
    pub fn total(&self) -> Result<f32, HeliosError> {
        self.validate()
    }

    /// Checks every weight is finite and not negative, and that their sum is positive and finite;
    /// returns the sum. Otherwise [`HeliosError::InvalidWeights`] naming the first bad prompt.
    pub fn validate(&self) -> Result<f32, HeliosError> {
        for (name, w) in &self.0 {
            if !(w.is_finite() && *w >= 0.0) {
                return Err(HeliosError::InvalidWeights {
                    reason: format!(
                        "the weight of `{}` is {w}; weights must be finite and not negative",
                        echo(name)
                    ),
                });
            }
        }
        let total: f32 = self.0.values().sum();
        if !(total > 0.0 && total.is_finite()) {
            return Err(HeliosError::InvalidWeights {
                reason: format!(
                    "{} prompt weights sum to {total}; at least one must be positive and the sum finite",
                    self.0.len()
                ),
            });
        }
        Ok(total)
    }

    /// Parses `name` or `name=0.7,other=0.3`. Commas and `=` separate entries, so free text that
    /// contains them goes in with [`Self::one`] / [`Self::with`] instead.
    pub fn parse(spec: &str) -> Result<Self, HeliosError> {
        let mut out = Self::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = match part.split_once('=') {
                Some((n, w)) => {
                    let w: f32 = w.trim().parse().map_err(|_| HeliosError::InvalidWeights {
                        reason: format!(
                            "weight `{}` of `{}` is not a number",
                            echo(w.trim()),
                            echo(n.trim())
                        ),
                    })?;
                    (n.trim(), w)
                }
                None => (part, 1.0),
            };
            if !(weight.is_finite() && weight >= 0.0) {
                return Err(HeliosError::InvalidWeights {
                    reason: format!(
                        "the weight of `{}` is {weight}; weights must be finite and not negative",
                        echo(name)
                    ),
                });
            }
            out.0.insert(name.to_string(), weight);
        }
        if out.0.is_empty() {
            return Err(HeliosError::InvalidWeights {
                reason: "the prompt specification is empty".into(),
            });
        }
        Ok(out)
    }
}

/// Crossfade of the prompt embedding over chunks after the weights change.
///
/// Chunk `j` after a change (j = 0 is the first new chunk) uses `lerp(from, to, min(1, (j+1)/n))`,
/// so with `n = 1` the next chunk uses the new prompt fully and with `n = 2` it is half way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptCrossfade {
    /// Target weights.
    pub target: PromptWeights,
    /// Weights in force before the change (None: no fade).
    pub from: Option<PromptWeights>,
    /// Chunks the fade takes (≥ 1).
    pub chunks: u32,
    /// Chunks generated since the change.
    pub progress: u32,
}

impl PromptCrossfade {
    /// Starts with `weights`, no fade.
    pub fn new(weights: PromptWeights, chunks: u32) -> Self {
        Self {
            target: weights,
            from: None,
            chunks: chunks.max(1),
            progress: 0,
        }
    }

    /// Changes the target; the fade starts from what the last chunk used.
    pub fn set_target(&mut self, weights: PromptWeights) {
        if weights == self.target {
            return;
        }
        let current = self.current_mix();
        self.from = Some(current);
        self.target = weights;
        self.progress = 0;
    }

    /// Checks both weight sets ([`PromptWeights::validate`]) and that the fade takes at least one chunk.
    pub fn validate(&self) -> Result<(), HeliosError> {
        if self.chunks == 0 {
            return Err(HeliosError::state(
                "prompt.chunks",
                "a crossfade takes at least one chunk",
            ));
        }
        self.target.validate()?;
        if let Some(from) = &self.from {
            from.validate()?;
        }
        Ok(())
    }

    /// Mix the previous chunk ended on, as weights (used to restart a fade mid-way).
    fn current_mix(&self) -> PromptWeights {
        let Some(from) = &self.from else {
            return self.target.clone();
        };
        let t = (self.progress as f32 / self.chunks as f32).min(1.0);
        mix_weights(from, &self.target, t)
    }

    /// Weights and embedding for the next chunk, then advances the fade.
    pub fn next_embedding(
        &mut self,
        bank: &EmbeddingBank,
    ) -> Result<(PromptWeights, Array3<f32>), HeliosError> {
        self.next_embedding_from(&mut &*bank)
    }

    /// [`Self::next_embedding`] with prompts resolved by `source` (e.g. bank + text encoder).
    pub fn next_embedding_from(
        &mut self,
        source: &mut dyn PromptSource,
    ) -> Result<(PromptWeights, Array3<f32>), HeliosError> {
        // the mix below clamps at 0 and would hide a NaN weight
        self.validate()?;
        let weights = match &self.from {
            None => self.target.clone(),
            Some(from) => {
                let t = (self.progress.saturating_add(1) as f32 / self.chunks as f32).min(1.0);
                mix_weights(from, &self.target, t)
            }
        };
        let emb = blend(source, &weights)?;
        self.progress = self.progress.saturating_add(1);
        if self.progress >= self.chunks {
            self.from = None;
        }
        Ok((weights, emb))
    }
}

/// `(1-t)·a + t·b` over normalised weights.
fn mix_weights(a: &PromptWeights, b: &PromptWeights, t: f32) -> PromptWeights {
    let norm =
        |w: &PromptWeights| -> f32 { w.0.values().filter(|v| **v > 0.0).sum::<f32>().max(1e-12) };
    let (na, nb) = (norm(a), norm(b));
    let mut out = BTreeMap::new();
    for (k, v) in &a.0 {
        *out.entry(k.clone()).or_insert(0.0) += (1.0 - t) * v.max(0.0) / na;
    }
    for (k, v) in &b.0 {
        *out.entry(k.clone()).or_insert(0.0) += t * v.max(0.0) / nb;
    }
    // a finished fade leaves the old prompts at weight 0: drop them so reports show only what is used
    out.retain(|_, w| *w > 0.0);
    PromptWeights(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bank() -> EmbeddingBank {
        let mut entries = BTreeMap::new();
        entries.insert("a".to_string(), Array2::from_elem((2, 3), 1.0f32));
        entries.insert("b".to_string(), Array2::from_elem((2, 3), 3.0f32));
        EmbeddingBank {
            seq_len: 2,
            dim: 3,
            entries,
            texts: BTreeMap::new(),
        }
    }

    #[test]
    fn blend_normalises_weights() {
        let e = bank()
            .blend(&PromptWeights::one("a").with("b", 3.0))
            .unwrap();
        assert_eq!(e.shape(), &[1, 2, 3]);
        assert!(
            (e[[0, 0, 0]] - 2.5).abs() < 1e-6,
            "0.25·1 + 0.75·3 = 2.5, got {}",
            e[[0, 0, 0]]
        );
    }

    #[test]
    fn unknown_prompt_is_a_typed_error() {
        let err = bank().blend(&PromptWeights::one("zzz")).unwrap_err();
        assert!(
            matches!(err, HeliosError::UnknownPrompt { ref name, .. } if name == "zzz"),
            "{err}"
        );
    }

    #[test]
    fn crossfade_reaches_target_after_n_chunks() {
        let b = bank();
        let mut fade = PromptCrossfade::new(PromptWeights::one("a"), 2);
        assert_eq!(fade.next_embedding(&b).unwrap().1[[0, 0, 0]], 1.0);
        fade.set_target(PromptWeights::one("b"));
        assert!(
            (fade.next_embedding(&b).unwrap().1[[0, 0, 0]] - 2.0).abs() < 1e-6,
            "half way"
        );
        assert!(
            (fade.next_embedding(&b).unwrap().1[[0, 0, 0]] - 3.0).abs() < 1e-6,
            "arrived"
        );
        assert!(
            (fade.next_embedding(&b).unwrap().1[[0, 0, 0]] - 3.0).abs() < 1e-6,
            "stays"
        );
    }

    #[test]
    fn parse_weights() {
        let w = PromptWeights::parse("day=0.7, night=0.3").unwrap();
        assert_eq!(w.0["day"], 0.7);
        assert_eq!(
            PromptWeights::parse("dusk").unwrap(),
            PromptWeights::one("dusk")
        );
        assert!(PromptWeights::parse("day=abc").is_err());
    }

    #[test]
    fn nan_inf_and_negative_weights_are_typed_errors() {
        for bad in [f32::NAN, f32::INFINITY, -1.0] {
            let w = PromptWeights::one("a").with("b", bad);
            assert!(
                matches!(w.validate(), Err(HeliosError::InvalidWeights { ref reason }) if reason.contains("`b`")),
                "weight {bad} next to a valid one must be InvalidWeights naming `b`"
            );
            assert!(
                matches!(bank().blend(&w), Err(HeliosError::InvalidWeights { .. })),
                "blend must refuse weight {bad} before embedding anything"
            );
        }
        let huge = PromptWeights::one("a")
            .with("b", f32::MAX)
            .with("c", f32::MAX);
        assert!(
            matches!(huge.total(), Err(HeliosError::InvalidWeights { .. })),
            "a sum that overflows to infinity is refused"
        );
        for spec in ["day=nan", "day=inf", "day=-0.5", ""] {
            assert!(
                matches!(
                    PromptWeights::parse(spec),
                    Err(HeliosError::InvalidWeights { .. })
                ),
                "{spec:?} should be InvalidWeights"
            );
        }
        // a crossfade towards a NaN weight is refused too (the mix would clamp it to 0)
        let b = bank();
        let mut fade = PromptCrossfade::new(PromptWeights::one("a"), 4);
        fade.set_target(PromptWeights::one("b").with("a", f32::NAN));
        assert!(matches!(
            fade.next_embedding(&b),
            Err(HeliosError::InvalidWeights { .. })
        ));
    }

    #[test]
    fn a_restored_fade_at_the_counter_limit_still_blends() {
        let mut fade = PromptCrossfade {
            target: PromptWeights::one("b"),
            from: Some(PromptWeights::one("a")),
            chunks: 2,
            progress: u32::MAX,
        };
        let (_, e) = fade
            .next_embedding(&bank())
            .expect("a saved progress at u32::MAX must not overflow");
        assert!((e[[0, 0, 0]] - 3.0).abs() < 1e-6, "the fade is over");
    }

    #[test]
    fn a_huge_unknown_name_is_cut_in_the_error() {
        let name = "x".repeat(1 << 20);
        let err = bank().blend(&PromptWeights::one(name)).unwrap_err();
        assert!(
            matches!(err, HeliosError::UnknownPrompt { .. }) && err.to_string().len() < 400,
            "a 1 MB prompt name must not be echoed whole ({} bytes)",
            err.to_string().len()
        );
    }
}
