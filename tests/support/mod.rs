//! Helpers of the bad-input tests (`tests/bad_input.rs`, `tests/fuzz_input.rs`): editing one field of RON
//! text, a seeded generator, fake networks and a scratch copy of a model.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::{Path, PathBuf};

use bevy_helios::core::embedding::EmbeddingBank;
use bevy_helios::core::manifest::ModelManifest;
use bevy_helios::core::sampler::{Decoder, Denoiser, DenoiserInput};
use bevy_helios::error::HeliosError;
use ndarray::Array5;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Byte range of the value of `key` in RON text (`key:` after `(` or `,`), brackets and strings included.
pub fn value_span(text: &str, key: &str) -> Option<(usize, usize)> {
    let needle = format!("{key}:");
    let bytes = text.as_bytes();
    let mut from = 0;
    let start = loop {
        let at = from + text[from..].find(&needle)?;
        if at > 0 && matches!(bytes[at - 1], b'(' | b',' | b' ' | b'\n') {
            break at + needle.len();
        }
        from = at + 1;
    };
    let start = start + text[start..].len() - text[start..].trim_start().len();
    let (mut depth, mut in_str, mut i) = (0i32, false, start);
    while i < bytes.len() {
        let b = bytes[i];
        if in_str {
            match b {
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_str = true,
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' if depth == 0 => break,
                b')' | b']' | b'}' => depth -= 1,
                b',' if depth == 0 => break,
                _ => {}
            }
        }
        i += 1;
    }
    Some((start, i))
}

/// The value of `key` in RON text.
pub fn get_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    value_span(text, key).map(|(a, b)| &text[a..b])
}

/// `text` with the value of `key` replaced by `value` (panics if `key` is absent: a test bug).
pub fn set_field(text: &str, key: &str, value: &str) -> String {
    let (a, b) = value_span(text, key).unwrap_or_else(|| panic!("no field `{key}` in the text"));
    format!("{}{value}{}", &text[..a], &text[b..])
}

/// xorshift64*: a seeded generator for the fuzz loops (no dependency, same sequence everywhere).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Networks of the right shapes that return zeros: the sampler's and decoder's arithmetic runs on any
/// manifest without ONNX Runtime.
pub struct ZeroNets {
    pub video: (usize, usize, usize),
}

impl ZeroNets {
    pub fn for_manifest(m: &ModelManifest) -> Self {
        Self {
            video: (m.frames_per_chunk(), m.height, m.width),
        }
    }
}

impl Denoiser for ZeroNets {
    fn velocity(&mut self, input: &DenoiserInput<'_>) -> Result<Array5<f32>, HeliosError> {
        Ok(Array5::zeros(input.sample.raw_dim()))
    }
}

impl Decoder for ZeroNets {
    fn decode(&mut self, _latents: &Array5<f32>) -> Result<Array5<f32>, HeliosError> {
        let (t, h, w) = self.video;
        Ok(Array5::zeros((1, 3, t, h, w)))
    }
}

/// A bank with the prompts `day` and `night` of `[seq_len, dim]` (small values).
pub fn bank(seq_len: usize, dim: usize) -> Result<EmbeddingBank, HeliosError> {
    let data: Vec<u8> = (0..seq_len * dim)
        .flat_map(|i| ((i % 7) as f32 * 0.01).to_le_bytes())
        .collect();
    let view = || {
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![seq_len, dim], &data)
            .expect("sizes match")
    };
    let bytes =
        safetensors::serialize([("day", view()), ("night", view())], None).expect("serialise");
    EmbeddingBank::from_bytes(&bytes, Path::new("test-bank.safetensors"), seq_len, dim)
}

/// A scratch directory holding `src`'s files: links to them, except `copy`, which are copied so a test
/// may change them. Removed and made again on each call.
pub fn scratch_model(src: &Path, tag: &str, copy: &[&str]) -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("helios-bad-input-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let name = entry.file_name();
        let to = dir.join(&name);
        if copy.iter().any(|c| name == **c) || name == "manifest.ron" {
            std::fs::copy(entry.path(), to)?;
        } else {
            link(&entry.path(), &to)?;
        }
    }
    Ok(dir)
}

#[cfg(unix)]
fn link(from: &Path, to: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(from, to)
}

#[cfg(not(unix))]
fn link(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::copy(from, to).map(|_| ())
}
