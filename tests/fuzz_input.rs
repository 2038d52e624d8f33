//! Seeded fuzz loops over the two files a game feeds the core: `manifest.ron` and a saved
//! `GenerationState`. Every mutant must give `Ok` or a typed error: a panic fails the test (each case runs
//! under `catch_unwind`), and the global allocator below aborts the run on any single allocation over
//! 1 GiB, the "absurd number becomes a multi-gigabyte allocation" failure. The seed is fixed, so a failure
//! replays; `HELIOS_FUZZ_SEED` and `HELIOS_FUZZ_CASES` explore further.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use bevy_helios::core::manifest::ModelManifest;
use bevy_helios::core::model::HeliosModel;
use bevy_helios::core::runtime::RuntimeConfig;
use bevy_helios::core::stream::StreamConfig;
use bevy_helios::prelude::*;
use support::{Rng, ZeroNets, root, value_span};

/// Any single allocation above this aborts the test binary (a failure, with the size in the message).
const ALLOCATION_CAP: usize = 1 << 30;

/// Allocates through the system allocator, refusing requests above [`ALLOCATION_CAP`] and recording the
/// largest request.
struct CappedAlloc;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

#[expect(
    unsafe_code,
    reason = "a capped global allocator needs `unsafe impl GlobalAlloc`"
)]
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        if layout.size() > ALLOCATION_CAP {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        if new_size > ALLOCATION_CAP {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CappedAlloc = CappedAlloc;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Values that break numbers: zero, one, the integer limits and just past them, huge, tiny, NaN.
const EVIL: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "-1",
    "7",
    "19",
    "64",
    "255",
    "65536",
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "0.0",
    "-0.0",
    "0.5",
    "1e-320",
    "1e38",
    "1e308",
    "-1e308",
    "NaN",
    "inf",
    "-inf",
];

/// Byte ranges of the numbers in `text` (not inside strings or identifiers).
fn number_spans(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut in_str) = (0, false);
    while i < b.len() {
        let c = b[i];
        if in_str {
            if c == b'\\' {
                i += 1;
            } else if c == b'"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_str = true;
            i += 1;
            continue;
        }
        let starts =
            c.is_ascii_digit() || (c == b'-' && b.get(i + 1).is_some_and(u8::is_ascii_digit));
        let after_ident = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if starts && !after_ident {
            let start = i;
            i += 1;
            while i < b.len() && matches!(b[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'-' | b'+') {
                i += 1;
            }
            out.push((start, i));
            continue;
        }
        i += 1;
    }
    out
}

/// Replaces the numbers at `spans` (chosen by `rng`) with evil values, right to left so offsets hold.
fn mutate_numbers(text: &str, spans: &[(usize, usize)], count: usize, rng: &mut Rng) -> String {
    let mut picked: Vec<(usize, usize)> = (0..count).map(|_| *rng.pick(spans)).collect();
    picked.sort_unstable();
    picked.dedup();
    let mut out = text.to_string();
    for (a, b) in picked.into_iter().rev() {
        let evil = rng.pick(EVIL);
        out.replace_range(a..b, evil);
    }
    out
}

/// One byte-level damage: cut the text, drop a range, or repeat a range.
fn damage_bytes(text: &str, rng: &mut Rng) -> String {
    let mut at = rng.below(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let mut end = (at + 1 + rng.below(32)).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    match rng.below(3) {
        0 => text[..at].to_string(),
        1 => format!("{}{}", &text[..at], &text[end..]),
        _ => format!("{}{}", &text[..end], &text[at..]),
    }
}

/// The error's variant name (and field, for state errors), for the tally.
fn variant(e: &HeliosError) -> String {
    if let HeliosError::StateInvalid { field, .. } = e {
        return format!("StateInvalid({field})");
    }
    let s = format!("{e:?}");
    s.split(['(', ' ', '{']).next().unwrap_or("?").to_string()
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "non-string panic".into())
}

#[derive(Default)]
struct Tally {
    executions: u64,
    outcomes: BTreeMap<String, u64>,
    failures: Vec<String>,
}

impl Tally {
    fn count(&mut self, outcome: impl Into<String>) {
        *self.outcomes.entry(outcome.into()).or_default() += 1;
    }

    fn report(&self, name: &str) {
        eprintln!(
            "{name}: {} executions, {} failures; outcomes {:?}; largest allocation {} bytes",
            self.executions,
            self.failures.len(),
            self.outcomes,
            LARGEST.load(Ordering::Relaxed)
        );
        for f in self.failures.iter().take(10) {
            eprintln!("  FAILURE: {f}");
        }
    }
}

/// Generates one chunk with zero networks on a manifest that validated: the sampler and decoder bookkeeping
/// must cope with every number the manifest allows.
fn run_fake_chunk(m: ModelManifest) -> Result<(), HeliosError> {
    let bank = support::bank(m.embeddings.seq_len, m.embeddings.dim)?;
    let nets = ZeroNets::for_manifest(&m);
    let mut model = HeliosModel::with_networks(m, bank, nets);
    let mut state = model.new_stream(&StreamConfig::new(PromptWeights::one("day"), 5))?;
    model.next_chunk(&mut state)?;
    let saved = state.to_ron()?;
    let mut again = model.restore(&saved)?;
    model.next_chunk(&mut again).map(|_| ())
}

#[test]
fn manifest_mutations_give_ok_or_a_typed_error() {
    let text = std::fs::read_to_string(root().join("models/helios-tiny/manifest.ron"))
        .expect("models/helios-tiny/manifest.ron");
    let path = Path::new("fuzz/manifest.ron");
    let spans = number_spans(&text);
    assert!(spans.len() > 100, "the manifest is full of numbers");
    let seed = env_or("HELIOS_FUZZ_SEED", 0x5EED_0001);
    let cases = env_or("HELIOS_FUZZ_CASES", 4000);
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    for case in 0..cases {
        let mutant = if rng.below(10) == 0 {
            damage_bytes(&text, &mut rng)
        } else {
            let n = 1 + rng.below(3);
            mutate_numbers(&text, &spans, n, &mut rng)
        };
        tally.executions += 1;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            match ModelManifest::parse(&mutant, path) {
                Err(e @ HeliosError::ManifestInvalid { .. }) => Ok(variant(&e)),
                Err(other) => Err(format!("parse gave {other} (expected ManifestInvalid)")),
                Ok(m) => match run_fake_chunk(m) {
                    Ok(()) => Ok("valid, chunk ok".into()),
                    Err(e) => Ok(format!("valid, chunk {}", variant(&e))),
                },
            }
        }));
        match outcome {
            Ok(Ok(o)) => tally.count(o),
            Ok(Err(why)) => tally.failures.push(format!("case {case}: {why}")),
            Err(p) => tally
                .failures
                .push(format!("case {case}: panic `{}`", panic_text(&*p))),
        }
    }
    tally.report("manifest fuzz");
    assert!(
        tally.failures.is_empty(),
        "{} of {} manifest mutants panicked or gave an untyped error (seed {seed:#x})",
        tally.failures.len(),
        tally.executions
    );
    assert!(
        LARGEST.load(Ordering::Relaxed) < 256 << 20,
        "a tiny-sized manifest should never need a 256 MiB allocation"
    );
}

/// Mutants of a saved helios-tiny state: one or two edits of the fields restore must check.
fn mutate_state(text: &str, rng: &mut Rng) -> String {
    let big = |k: &str| value_span(text, k).unwrap_or((0, 0));
    let (frames, anchor) = (big("frames"), big("anchor"));
    let structural: Vec<(usize, usize)> = number_spans(text)
        .into_iter()
        .filter(|&(a, _)| !(frames.0..frames.1).contains(&a) && !(anchor.0..anchor.1).contains(&a))
        .collect();
    let mut out = text.to_string();
    for _ in 0..1 + rng.below(2) {
        out = match rng.below(20) {
            0..=8 => mutate_numbers(&out, &structural_in(&out, &structural, text), 1, rng),
            9 | 10 => {
                // a value inside the history or anchor
                let spans = number_spans(&out);
                let inside: Vec<_> = spans
                    .into_iter()
                    .filter(|&(a, _)| {
                        (frames.0..frames.1).contains(&a) || (anchor.0..anchor.1).contains(&a)
                    })
                    .collect();
                if inside.is_empty() {
                    out
                } else {
                    mutate_numbers(&out, &inside, 1, rng)
                }
            }
            11 | 12 => {
                let key = *rng.pick(&["frames", "anchor"]);
                let Some((a, b)) = value_span(&out, key) else {
                    continue;
                };
                let value = &out[a..b];
                let replaced = match rng.below(5) {
                    0 => "None".to_string(),
                    1 => {
                        if key == "anchor" {
                            "Some([])".into()
                        } else {
                            "[]".into()
                        }
                    }
                    2 => {
                        // drop the last few values
                        let keep = value.len().saturating_sub(2 + rng.below(40));
                        let cut = value[..keep].rfind(',').unwrap_or(1);
                        format!(
                            "{}{}",
                            &value[..cut],
                            if key == "anchor" { "])" } else { "]" }
                        )
                    }
                    3 => value.replacen('[', "[1.0,2.0,", 1),
                    _ => value.replacen('[', "[[", 1),
                };
                format!("{}{replaced}{}", &out[..a], &out[b..])
            }
            13 => {
                let (key, value) = *rng.pick(&[
                    ("state", "(0,0,0,0)"),
                    ("state", "(1,0,0,0)"),
                    ("spare", "Some(9221120237041090560)"),
                    ("spare", "Some(9218868437227405312)"),
                    ("spare", "Some(0)"),
                    ("spare", "None"),
                ]);
                try_set(&out, key, value)
            }
            14 | 15 => {
                let weights = *rng.pick(&[
                    "({\"night\":NaN})",
                    "({\"night\":-1.0})",
                    "({\"night\":inf})",
                    "({})",
                    "({\"no-such-prompt\":1.0})",
                    "({\"night\":3e38,\"day\":3e38})",
                    "({\"night\":0.0})",
                    "({\"day\":0.5,\"night\":0.5})",
                ]);
                let key = *rng.pick(&["target", "from"]);
                let value = if key == "from" {
                    format!("Some({weights})")
                } else {
                    weights.to_string()
                };
                try_set(&out, key, &value)
            }
            16 => {
                let (key, value) = *rng.pick(&[
                    ("model", "\"helios-14b\""),
                    ("model", "\"\""),
                    ("model_hash", "\"ffffffffffffffff\""),
                    ("model_hash", "\"\""),
                ]);
                try_set(&out, key, value)
            }
            _ => damage_bytes(&out, rng),
        };
    }
    out
}

/// `text` with `key` set to `value`, or unchanged when an earlier edit removed the key.
fn try_set(text: &str, key: &str, value: &str) -> String {
    match value_span(text, key) {
        Some((a, b)) => format!("{}{value}{}", &text[..a], &text[b..]),
        None => text.to_string(),
    }
}

/// The structural number spans of the original text, still valid for `now` only if nothing moved; after an
/// earlier edit the spans are recomputed outside the big arrays.
fn structural_in(
    now: &str,
    original_spans: &[(usize, usize)],
    original: &str,
) -> Vec<(usize, usize)> {
    if now == original {
        return original_spans.to_vec();
    }
    let big = |k: &str| value_span(now, k).unwrap_or((0, 0));
    let (frames, anchor) = (big("frames"), big("anchor"));
    number_spans(now)
        .into_iter()
        .filter(|&(a, _)| !(frames.0..frames.1).contains(&a) && !(anchor.0..anchor.1).contains(&a))
        .collect()
}

#[test]
fn saved_state_mutations_give_ok_or_a_typed_error() -> Result<(), HeliosError> {
    let mut model = HeliosModel::load(root().join("models/helios-tiny"), &RuntimeConfig::cpu())?;
    let mut state = model.new_stream(&StreamConfig {
        crossfade_chunks: 3,
        ..StreamConfig::new(PromptWeights::one("night"), 3)
    })?;
    model.next_chunk(&mut state)?;
    // mid-crossfade, so `from` is in the save too
    state.set_prompt(PromptWeights::one("day").with("night", 0.5));
    model.next_chunk(&mut state)?;
    let text = state.to_ron()?;
    let seed = env_or("HELIOS_FUZZ_SEED", 0x5EED_0002);
    // a restored mutant runs a real chunk on the CPU (about 0.15 s), so fewer cases than the manifest loop
    let cases = env_or("HELIOS_FUZZ_CASES", 4000) / 20;
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    for case in 0..cases {
        let mutant = mutate_state(&text, &mut rng);
        tally.executions += 1;
        let outcome = catch_unwind(AssertUnwindSafe(|| match model.restore(&mutant) {
            Err(e) => format!("restore {}", variant(&e)),
            Ok(mut restored) => match model.next_chunk(&mut restored) {
                Ok(_) => "restore ok, chunk ok".into(),
                Err(e) => format!("restore ok, chunk {}", variant(&e)),
            },
        }));
        match outcome {
            Ok(o) => tally.count(o),
            Err(p) => tally
                .failures
                .push(format!("case {case}: panic `{}`", panic_text(&*p))),
        }
    }
    tally.report("saved-state fuzz");
    assert!(
        tally.failures.is_empty(),
        "{} of {} state mutants panicked (seed {seed:#x})",
        tally.failures.len(),
        tally.executions
    );
    assert!(
        tally
            .outcomes
            .keys()
            .any(|k| k.starts_with("restore StateInvalid")),
        "the mutants should reach the state checks: {:?}",
        tally.outcomes
    );
    Ok(())
}
