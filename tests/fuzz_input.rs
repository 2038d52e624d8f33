//! Seeded fuzz loops over the files a game feeds the crate: `manifest.ron`, a saved `GenerationState` and
//! (with the `plugin` feature) a `*.cutscene.ron`. Every mutant must give `Ok` or a typed error: a panic
//! fails the test (each case runs under `catch_unwind`), and the global allocator below aborts the run on
//! any single allocation over 1 GiB, the "absurd number becomes a multi-gigabyte allocation" failure. The
//! seed is fixed, so a failure replays; `HELIOS_FUZZ_SEED` and `HELIOS_FUZZ_CASES` explore further, and
//! `HELIOS_FUZZ_SECONDS` runs each loop for a wall-clock budget instead of a case count
//! (`tools/fuzz/run.sh`). Each loop ends with one `fuzz report:` line that the script reads.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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

/// How long a loop runs: `cases` mutants, or for `HELIOS_FUZZ_SECONDS` of wall time when that is set.
struct Budget {
    cases: u64,
    until: Option<Instant>,
}

impl Budget {
    /// `cases` unless `HELIOS_FUZZ_SECONDS` is set.
    fn from_env(cases: u64) -> Self {
        let seconds = env_or("HELIOS_FUZZ_SECONDS", 0);
        Self {
            cases,
            until: (seconds > 0).then(|| Instant::now() + Duration::from_secs(seconds)),
        }
    }

    /// Whether to run another case after `done`.
    fn more(&self, done: u64) -> bool {
        match self.until {
            Some(t) => Instant::now() < t,
            None => done < self.cases,
        }
    }
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

/// The error's variant name (and field, for manifest and state errors), for the tally.
fn variant(e: &HeliosError) -> String {
    match e {
        HeliosError::StateInvalid { field, .. } => return format!("StateInvalid({field})"),
        HeliosError::ManifestInvalid { field, .. } => return format!("ManifestInvalid({field})"),
        _ => {}
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
    panics: u64,
}

impl Tally {
    fn count(&mut self, outcome: impl Into<String>) {
        *self.outcomes.entry(outcome.into()).or_default() += 1;
    }

    fn panicked(&mut self, case: u64, payload: &(dyn std::any::Any + Send)) {
        self.panics += 1;
        self.failures
            .push(format!("case {case}: panic `{}`", panic_text(payload)));
    }

    /// Records one case run under `catch_unwind`: an outcome, a failure (`Err(why)`) or a panic.
    fn record(&mut self, case: u64, outcome: std::thread::Result<Result<String, String>>) {
        match outcome {
            Ok(Ok(o)) => self.count(o),
            Ok(Err(why)) => self.failures.push(format!("case {case}: {why}")),
            Err(p) => self.panicked(case, &*p),
        }
    }

    /// The outcomes, then one `fuzz report:` line of `key=value`s for `tools/fuzz/run.sh`. The largest
    /// allocation is the process's: every loop's under `cargo test`, this loop's alone under the script.
    fn report(&self, target: &str, started: Instant) {
        eprintln!("{target} fuzz outcomes: {:?}", self.outcomes);
        for f in self.failures.iter().take(10) {
            eprintln!("  FAILURE: {f}");
        }
        eprintln!(
            "fuzz report: target={target} executions={} seconds={:.1} distinct_outcomes={} panics={} failures={} largest_allocation={}",
            self.executions,
            started.elapsed().as_secs_f64(),
            self.outcomes.len(),
            self.panics,
            self.failures.len(),
            LARGEST.load(Ordering::Relaxed)
        );
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
    let budget = Budget::from_env(env_or("HELIOS_FUZZ_CASES", 4000));
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    let mut case = 0;
    while budget.more(case) {
        case += 1;
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
        tally.record(case, outcome);
    }
    tally.report("manifest", started);
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
    let budget = Budget::from_env(env_or("HELIOS_FUZZ_CASES", 4000) / 20);
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    let mut case = 0;
    while budget.more(case) {
        case += 1;
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
            Err(p) => tally.panicked(case, &*p),
        }
    }
    tally.report("saved_state", started);
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

/// The cutscene loader (`Cutscene::from_ron`, what `CutsceneLoader` runs on a file's bytes) and what
/// playback computes from a loaded cutscene: each shot's prompt with the `PlayCutscene` variables filled
/// in (`Cutscene::shot_prompt`), its chunk count at the settings' playout rate
/// (`ShotDuration::chunks`) and the frame where each shot ends (the sum `CutscenePlayer` keeps).
#[cfg(feature = "plugin")]
mod cutscene {
    use bevy_helios::cutscene::{Cutscene, CutsceneLoaderError};

    use super::*;

    /// Durations: at and past each limit, the integer limits, and what a float can be.
    const DURATIONS: &[&str] = &[
        "Chunks(0)",
        "Chunks(1)",
        "Chunks(1000)",
        "Chunks(1001)",
        "Chunks(4294967295)",
        "Chunks(4294967296)",
        "Chunks(18446744073709551615)",
        "Chunks(-1)",
        "Chunks(1.5)",
        "Seconds(0.0)",
        "Seconds(-0.0)",
        "Seconds(-1.0)",
        "Seconds(1e-45)",
        "Seconds(0.001)",
        "Seconds(600.0)",
        "Seconds(600.00006)",
        "Seconds(1e30)",
        "Seconds(3.4e38)",
        "Seconds(1e39)",
        "Seconds(NaN)",
        "Seconds(inf)",
        "Seconds(-inf)",
        "Seconds(5)",
        "Seconds(\"5\")",
        "Minutes(1.0)",
        "Chunks",
    ];

    const TRANSITIONS: &[&str] = &[
        "Cut",
        "Crossfade(0)",
        "Crossfade(1)",
        "Crossfade(64)",
        "Crossfade(65)",
        "Crossfade(4294967295)",
        "Crossfade(-1)",
        "Crossfade",
        "Dissolve(1)",
    ];

    /// Prompt maps: `{variable}` syntax right and wrong, weights at the float limits, odd keys.
    const PROMPTS: &[&str] = &[
        r#"{"{choice}": 1.0}"#,
        r#"{"{choice}{outcome}{time}": 1.0}"#,
        r#"{"{choice}": 0.5, "hero": 0.5}"#,
        r#"{"{": 1.0}"#,
        r#"{"}": 1.0}"#,
        r#"{"{}": 1.0}"#,
        r#"{"{{choice}}": 1.0}"#,
        r#"{"{ choice }": 1.0}"#,
        r#"{"{choice": 1.0}"#,
        r#"{"{é}": 1.0}"#,
        r#"{"é{choice}ü": 1.0}"#,
        r#"{"": 1.0}"#,
        r#"{" ": 1.0}"#,
        r#"{}"#,
        r#"{"night": 3.4e38, "day": 3.4e38}"#,
        r#"{"night": 1e-45}"#,
        r#"{"night": 0.0, "day": -0.0}"#,
        r#"{"night": NaN}"#,
        r#"{"night": inf}"#,
        r#"{"night": -1.0, "day": 2.0}"#,
        r#"{"night": 1}"#,
        r#"{"night": "1.0"}"#,
        r#"{"night": 1.0, "night": 2.0}"#,
        r#"{night: 1.0}"#,
        r#"{"\u{0}": 1.0}"#,
        r#"{"a\"b": 1.0}"#,
    ];

    /// Values a game might pass for a variable, down to a 100 KB player-typed name.
    fn variable_value(rng: &mut Rng) -> String {
        match rng.below(10) {
            0 => String::new(),
            1 => " ".into(),
            2 => "{choice}".into(),
            3 => "}".into(),
            4 => "é".repeat(1 + rng.below(200)),
            5 => "x".repeat(100_000),
            _ => (*rng.pick(&["hero", "villain", "good", "bad", "day", "night"])).into(),
        }
    }

    /// Byte ranges of the values of every `key:` in RON text.
    fn value_spans(text: &str, key: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut from = 0;
        while let Some((a, b)) = value_span(&text[from..], key) {
            out.push((from + a, from + b));
            from += b.max(a + 1);
            if from >= text.len() {
                break;
            }
        }
        out
    }

    /// `text` with one value of `key` (chosen by `rng`) replaced.
    fn replace_one(text: &str, key: &str, value: &str, rng: &mut Rng) -> String {
        let spans = value_spans(text, key);
        if spans.is_empty() {
            return text.to_string();
        }
        let (a, b) = *rng.pick(&spans);
        format!("{}{value}{}", &text[..a], &text[b..])
    }

    /// The first shot of `text` (`(` to its matching `)`), for repeating.
    fn first_shot(text: &str) -> Option<&str> {
        let (a, b) = value_span(text, "shots")?;
        let inner = text[a..b].trim_start_matches('[').trim_start();
        let start = text.len() - text[a..].len() + (text[a..b].len() - inner.len());
        let mut depth = 0;
        for (i, c) in text[start..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(&text[start..=start + i]);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// One structural edit: durations, transitions, prompts, names, shot counts, nesting, whole files.
    fn mutate_structure(text: &str, rng: &mut Rng) -> String {
        match rng.below(12) {
            0 | 1 => {
                let duration = *rng.pick(DURATIONS);
                replace_one(text, "duration", duration, rng)
            }
            2 => {
                let transition = *rng.pick(TRANSITIONS);
                replace_one(text, "transition", transition, rng)
            }
            3 | 4 => {
                let prompt = *rng.pick(PROMPTS);
                replace_one(text, "prompt", prompt, rng)
            }
            5 => {
                // a long prompt name: plain, or made of `{choice}`s (a template bomb with a long value)
                let name = if rng.below(2) == 0 {
                    "storm ".repeat(1 + rng.below(200_000))
                } else {
                    "{choice}".repeat(1 + rng.below(100_000))
                };
                replace_one(text, "prompt", &format!("{{\"{name}\": 1.0}}"), rng)
            }
            6 => {
                // many prompt names in one shot
                let n = 1 + rng.below(20_000);
                let names: Vec<String> = (0..n).map(|i| format!("\"p{i}\": 1.0")).collect();
                replace_one(text, "prompt", &format!("{{{}}}", names.join(", ")), rng)
            }
            7 => {
                let name = *rng.pick(&[
                    "Some(\"\")",
                    "None",
                    "\"bare\"",
                    "Some(\"\\u{0}\")",
                    "Some(\"{choice}\")",
                ]);
                let long = format!("Some(\"{}\")", "x".repeat(1 << (10 + rng.below(11))));
                let value = if rng.below(2) == 0 { name } else { &long };
                replace_one(text, "name", value, rng)
            }
            8 => {
                // thousands of shots: the first shot repeated, optionally with its duration at the limit
                let Some(shot) = first_shot(text) else {
                    return text.to_string();
                };
                // a file of a few MiB at most: the loop's own allocations stay far below the cap
                let n = (*rng.pick(&[2, 255, 256, 257, 1000, 10_000])).min((4 << 20) / shot.len());
                let shot = if rng.below(2) == 0 {
                    let longest = *rng.pick(&["Chunks(1000)", "Seconds(600.0)"]);
                    replace_one(shot, "duration", longest, rng)
                } else {
                    shot.to_string()
                };
                let shots = vec![shot; n].join(",\n");
                replace_one(text, "shots", &format!("[{shots}]"), rng)
            }
            9 => {
                // deep nesting around a value
                let depth = *rng.pick(&[16, 127, 128, 129, 1000, 100_000]);
                let (open, close) =
                    *rng.pick(&[("Some(", ")"), ("[", "]"), ("(", ")"), ("{", "}")]);
                let key = *rng.pick(&["name", "duration", "prompt", "shots", "seed"]);
                let Some((a, b)) = value_span(text, key) else {
                    return text.to_string();
                };
                format!(
                    "{}{}{}{}{}",
                    &text[..a],
                    open.repeat(depth),
                    &text[a..b],
                    close.repeat(depth),
                    &text[b..]
                )
            }
            10 => {
                let field = *rng.pick(&[
                    ", camera: true",
                    ", seed: Some(18446744073709551615)",
                    ", seed: Some(1)",
                    ", colour: 3",
                    ", duration: Chunks(1)",
                ]);
                let spans = value_spans(text, "duration");
                if spans.is_empty() {
                    return text.to_string();
                }
                let (_, b) = *rng.pick(&spans);
                format!("{}{field}{}", &text[..b], &text[b..])
            }
            _ => (*rng.pick(&[
                "",
                "()",
                "(shots: [])",
                "(shots: [(prompt: {}, duration: Chunks(1))])",
                "(shots: [(prompt: {\"a\": 1.0}, duration: Chunks(1))], shots: [])",
                "[]",
                "\u{feff}(shots: [(prompt: {\"a\": 1.0}, duration: Chunks(1))])",
                "(skippable: 1, shots: [(prompt: {\"a\": 1.0}, duration: Chunks(1))])",
            ]))
            .to_string(),
        }
    }

    /// Playout rates a game may set (`HeliosSettings::playout_fps` is not range-checked).
    const FPS: &[f32] = &[
        24.0,
        24.0,
        24.0,
        30.0,
        60.0,
        8.0,
        0.0,
        -24.0,
        1e-30,
        1e30,
        f32::MAX,
        f32::NAN,
        f32::INFINITY,
    ];

    /// Frames per chunk of a model: Helios' 33, the smallest, and the largest a valid manifest allows.
    const FRAMES_PER_CHUNK: &[usize] = &[33, 33, 33, 1, 9, 1 << 31];

    /// What playback computes from a cutscene the loader accepted. `Ok` is an outcome; `Err` is a bug: an
    /// overflow, a shot of no chunks, or a prompt the loader passed that the core's checks reject.
    fn play_back(
        cutscene: &Cutscene,
        variables: &BTreeMap<String, String>,
        fps: f32,
        frames_per_chunk: usize,
    ) -> Result<String, String> {
        let mut end_frame = 0u64;
        for (i, shot) in cutscene.shots.iter().enumerate() {
            match cutscene.shot_prompt(i, variables) {
                Err(reason) if reason.len() > 1000 => {
                    return Err(format!("shot {i}: a {} byte message", reason.len()));
                }
                Err(_) => return Ok("loaded, variables rejected".into()),
                Ok(weights) => {
                    if let Err(e) = weights.validate() {
                        return Err(format!(
                            "shot {i}: the prompt passed, but the core says {e}"
                        ));
                    }
                    if weights.0.keys().any(|k| k.trim().is_empty()) {
                        return Err(format!("shot {i}: a filled prompt name is empty"));
                    }
                }
            }
            let chunks = shot.duration.chunks(fps, frames_per_chunk);
            if chunks == 0 {
                return Err(format!("shot {i}: {:?} gave 0 chunks", shot.duration));
            }
            end_frame = chunks
                .checked_mul(frames_per_chunk as u64)
                .and_then(|f| f.checked_add(end_frame))
                .ok_or_else(|| {
                    format!(
                        "shot {i}: {:?} at {fps} fps is {chunks} chunks; its end frame overflows u64",
                        shot.duration
                    )
                })?;
        }
        Ok("loaded, played".into())
    }

    #[test]
    fn cutscene_mutations_give_ok_or_a_typed_error() {
        let dir = root().join("assets/cutscenes");
        let texts: Vec<String> = ["intro.cutscene.ron", "ending.cutscene.ron"]
            .iter()
            .map(|f| std::fs::read_to_string(dir.join(f)).expect("the example cutscenes"))
            .collect();
        let seed = env_or("HELIOS_FUZZ_SEED", 0x5EED_0003);
        let budget = Budget::from_env(env_or("HELIOS_FUZZ_CASES", 4000));
        let started = Instant::now();
        let mut rng = Rng::new(seed);
        let mut tally = Tally::default();
        let mut case = 0;
        while budget.more(case) {
            case += 1;
            let text = rng.pick(&texts).clone();
            let text = text.as_str();
            let mutant = match rng.below(10) {
                0 => damage_bytes(text, &mut rng),
                1..=3 => {
                    let spans = number_spans(text);
                    mutate_numbers(text, &spans, 1 + rng.below(3), &mut rng)
                }
                _ => {
                    let once = mutate_structure(text, &mut rng);
                    if rng.below(4) == 0 {
                        mutate_structure(&once, &mut rng)
                    } else {
                        once
                    }
                }
            };
            let mut variables = BTreeMap::new();
            for name in ["choice", "outcome", "time"] {
                if rng.below(8) != 0 {
                    variables.insert(name.to_string(), variable_value(&mut rng));
                }
            }
            let fps = *rng.pick(FPS);
            let frames_per_chunk = *rng.pick(FRAMES_PER_CHUNK);
            tally.executions += 1;
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                match Cutscene::from_ron(mutant.as_bytes()) {
                    Err(CutsceneLoaderError::Invalid { reason, .. }) if reason.len() > 1000 => {
                        Err(format!("a {} byte Invalid message", reason.len()))
                    }
                    Err(CutsceneLoaderError::Invalid { field, .. }) => {
                        Ok(format!("Invalid({field})"))
                    }
                    Err(CutsceneLoaderError::Ron(e)) => {
                        let code = format!("{:?}", e.code);
                        Ok(format!(
                            "Ron({})",
                            code.split([' ', '(', '{']).next().unwrap_or("?")
                        ))
                    }
                    Err(other) => Err(format!("unexpected error {other}")),
                    Ok(c) => play_back(&c, &variables, fps, frames_per_chunk),
                }
            }));
            tally.record(case, outcome);
        }
        tally.report("cutscene", started);
        assert!(
            tally.failures.is_empty(),
            "{} of {} cutscene mutants panicked or were accepted with values playback cannot use (seed {seed:#x})",
            tally.failures.len(),
            tally.executions
        );
        for outcome in [
            "Invalid(duration)",
            "Invalid(prompt)",
            "Ron(",
            "loaded, played",
        ] {
            assert!(
                tally.outcomes.keys().any(|k| k.starts_with(outcome)),
                "the mutants should reach `{outcome}`: {:?}",
                tally.outcomes
            );
        }
    }

    /// What the loop above found in the first loader, one case each: accepted weights the core rejects,
    /// a playout rate that overflowed the frame sums, a variable that empties a name, a template bomb (a
    /// 1.5 GB allocation: the run aborted), thousands of names, and a megabyte name echoed in the error.
    #[test]
    fn cutscene_fuzz_findings_stay_fixed() {
        let shot = |prompt: &str, duration: &str| {
            format!("(shots: [(prompt: {prompt}, duration: {duration})])")
        };
        let load = |text: &str| Cutscene::from_ron(text.as_bytes());
        let field_of = |r: Result<Cutscene, CutsceneLoaderError>| match r {
            Err(CutsceneLoaderError::Invalid {
                shot,
                field,
                reason,
            }) => {
                assert!(reason.len() < 400, "a {} byte reason", reason.len());
                Some((shot, field))
            }
            _ => None,
        };
        let vars = |value: &str| BTreeMap::from([("choice".to_string(), value.to_string())]);

        let inf_sum = shot(r#"{"night": 3.4e38, "day": 3.4e38}"#, "Chunks(1)");
        assert_eq!(
            field_of(load(&inf_sum)),
            Some((0, "prompt")),
            "weights summing to inf"
        );

        let c = load(&shot(r#"{"night": 1.0}"#, "Seconds(600.0)")).expect("valid");
        for fps in [f32::MAX, f32::INFINITY, f32::NAN, 1e30, -1.0, 0.0] {
            let chunks = c.shots[0].duration.chunks(fps, 1);
            assert!(
                (1..=600_000).contains(&chunks),
                "600 s at {fps} fps gave {chunks} chunks"
            );
        }
        assert_eq!(c.shots[0].duration.chunks(24.0, 33), 437, "600 s at 24 fps");

        let c = load(&shot(r#"{"{choice}": 1.0}"#, "Chunks(1)")).expect("valid");
        for empty in ["", "  "] {
            let err = c
                .shot_prompt(0, &vars(empty))
                .expect_err("an empty filled name");
            assert!(err.contains("empty"), "{err}");
        }

        let bomb_name = "{choice}".repeat(100_000);
        let bomb = shot(&format!(r#"{{"{bomb_name}": 1.0}}"#), "Chunks(1)");
        assert_eq!(field_of(load(&bomb)), Some((0, "prompt")), "an 800 KB name");
        let within = shot(
            &format!(r#"{{"{}": 1.0}}"#, "{choice}".repeat(500)),
            "Chunks(1)",
        );
        let c = load(&within).expect("a 4000 byte name is within the bound");
        let err = c
            .shot_prompt(0, &vars(&"x".repeat(100_000)))
            .expect_err("500 x 100 KB is too long a prompt");
        assert!(err.contains("longer than") && err.len() < 400, "{err}");

        let names: Vec<String> = (0..20_000).map(|i| format!("\"p{i}\": 1.0")).collect();
        let many = shot(&format!("{{{}}}", names.join(", ")), "Chunks(1)");
        assert_eq!(field_of(load(&many)), Some((0, "prompt")), "20 000 names");

        let long = shot(
            &format!(r#"{{"{}{{": 1.0}}"#, "storm ".repeat(200_000)),
            "Chunks(1)",
        );
        assert_eq!(field_of(load(&long)), Some((0, "prompt")), "a 1.2 MB name");

        let merged = load(&shot(r#"{"{choice}": 0.5, "hero": 0.5}"#, "Chunks(1)")).expect("valid");
        assert_eq!(
            merged.shot_prompt(0, &vars("hero")),
            Ok(PromptWeights::one("hero")),
            "names that fill to the same text add their weights"
        );
    }
}
