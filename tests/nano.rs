//! helios-nano end to end on the CPU: the shipped model, its text encoder and our sampler must make
//! frames that follow the prompt. Two free-text prompts that differ only in the time of day ("noon" vs
//! "night") must separate by mean luminance, and a bank name must give what its caption gives as free text.
//! Fails if the model files, the text encoder, the sampler or the decoder break (a wrong sigma, lost
//! conditioning, noise or a flat image all close the gap or change the frames).
//!
//! Needs `models/helios-nano` (exported by `tools/export/export.py`, see tools/nano/README.md). Core only:
//! runs with `--no-default-features` as well.

use std::path::PathBuf;
use std::time::Instant;

use bevy_helios::core::embedding::PromptWeights;
use bevy_helios::core::model::HeliosModel;
use bevy_helios::core::runtime::RuntimeConfig;
use bevy_helios::core::stream::{Chunk, StreamConfig};

const NOON: &str = "a forest at noon, slow camera";
const NIGHT: &str = "a forest at night, slow camera";
const SEED: u64 = 11;

/// Required noon-minus-night gap of mean luma (0..1). Measured on the real outputs (seed 11, 2 chunks
/// each, CPU): noon 0.458, night 0.125, gap 0.332; 0.12 is well under half of it.
const MIN_LUMA_GAP: f64 = 0.12;
/// Mean spatial standard deviation of luma per frame, lower bound: the scenes have a sky, a horizon and
/// trees (measured 0.159 noon, 0.060 night); a flat or washed-out decode falls below this.
const MIN_CONTRAST: f64 = 0.02;
/// Bank name vs the same caption as free text, same seed: mean absolute pixel difference in 0..255
/// (measured 0.078: the Rust MiniLM graph reproduces the Python embedding of the bank closely, not
/// bit for bit; the noon/night luma gap alone is ~85 levels).
const MAX_BANK_VS_TEXT: f64 = 2.0;

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/helios-nano")
}

fn luma(px: &[u8]) -> f64 {
    (0.299 * f64::from(px[0]) + 0.587 * f64::from(px[1]) + 0.114 * f64::from(px[2])) / 255.0
}

/// (mean luma, mean per-frame luma standard deviation) over all frames.
fn stats(chunks: &[Chunk]) -> (f64, f64) {
    let (mut mean, mut std, mut n) = (0.0, 0.0, 0.0);
    for frame in chunks.iter().flat_map(|c| &c.frames) {
        let l: Vec<f64> = frame.chunks_exact(4).map(luma).collect();
        let m = l.iter().sum::<f64>() / l.len() as f64;
        let v = l.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / l.len() as f64;
        mean += m;
        std += v.sqrt();
        n += 1.0;
    }
    (mean / n, std / n)
}

fn generate(
    model: &mut HeliosModel,
    prompt: &str,
    chunks: usize,
) -> Result<Vec<Chunk>, Box<dyn std::error::Error>> {
    let mut stream = model.new_stream(&StreamConfig::new(PromptWeights::one(prompt), SEED))?;
    let mut out = Vec::new();
    for _ in 0..chunks {
        let chunk = model.next_chunk(&mut stream)?;
        assert_eq!(
            (chunk.width, chunk.height),
            (128, 64),
            "helios-nano is 128x64"
        );
        assert_eq!(chunk.frames.len(), 33);
        out.push(chunk);
    }
    Ok(out)
}

#[test]
fn nano_follows_time_of_day() -> Result<(), Box<dyn std::error::Error>> {
    let dir = model_dir();
    assert!(
        dir.join("manifest.ron").exists(),
        "{} is missing: export helios-nano (tools/nano/README.md)",
        dir.display()
    );
    let t0 = Instant::now();
    let mut model = HeliosModel::load(&dir, &RuntimeConfig::cpu())?;
    assert!(
        model.text_encoder().is_some(),
        "helios-nano ships a text encoder"
    );
    let load_s = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let noon = generate(&mut model, NOON, 2)?;
    let night = generate(&mut model, NIGHT, 2)?;
    // The bank path: `night` is the bank name of NIGHT's caption (tools/nano/prompts.txt).
    let bank_night = generate(&mut model, "night", 1)?;
    let gen_s = t1.elapsed().as_secs_f64();

    let (noon_luma, noon_contrast) = stats(&noon);
    let (night_luma, night_contrast) = stats(&night);
    let (bank_luma, _) = stats(&bank_night);
    let bank_vs_text = bank_night[0]
        .frames
        .iter()
        .zip(&night[0].frames)
        .flat_map(|(a, b)| a.iter().zip(b.iter()))
        .map(|(a, b)| f64::from(a.abs_diff(*b)))
        .sum::<f64>()
        / (33.0 * 128.0 * 64.0 * 4.0);
    eprintln!(
        "helios-nano: load {load_s:.2}s, 5 chunks {gen_s:.2}s; luma noon {noon_luma:.3} night \
         {night_luma:.3} (gap {:.3}), bank night {bank_luma:.3}; contrast noon {noon_contrast:.3} night \
         {night_contrast:.3}; bank vs free text {bank_vs_text:.3}/255",
        noon_luma - night_luma
    );

    assert!(
        noon_luma - night_luma > MIN_LUMA_GAP,
        "noon ({noon_luma:.3}) must be brighter than night ({night_luma:.3}) by > {MIN_LUMA_GAP}"
    );
    assert!(
        noon_contrast > MIN_CONTRAST && night_contrast > MIN_CONTRAST,
        "frames are flat: luma std noon {noon_contrast:.3}, night {night_contrast:.3}"
    );
    assert!(
        bank_vs_text < MAX_BANK_VS_TEXT,
        "bank `night` and its caption as free text differ by {bank_vs_text:.3}/255 per byte"
    );
    assert!(
        noon_luma - bank_luma > MIN_LUMA_GAP,
        "bank `night` ({bank_luma:.3}) must be darker than noon ({noon_luma:.3})"
    );
    Ok(())
}
