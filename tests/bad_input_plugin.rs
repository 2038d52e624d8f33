//! The bad-input matrix on the plugin side: each class of bad file or value a game can feed the plugin gives its
//! typed error, a visible status (`HeliosStatus` or the screen's `StreamFailed`), the fallback image on the screens
//! it concerns, no panic, no stall of the app (the longest `App::update` is measured and bounded), and leaves every
//! file of the model directory as it was. The core side of the same classes is `tests/bad_input.rs`; cutscene files
//! (broken RON, a file that is missing, a handle nothing loads) are in `tests/cutscene.rs`.
#![cfg(feature = "plugin")]

mod common;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_helios::prelude::*;
use bevy_helios::screen::{Showing, fallback_pixels};
use common::app::*;
use sha2::{Digest, Sha256};
use support::{root, scratch_model, set_field};

/// Wall time a case may take to reach its error (the real ONNX backend on a busy 2-core machine).
const DEADLINE: Duration = Duration::from_secs(60);
/// Longest single `App::update` allowed. Loading and generation run on the worker thread, so an update costs
/// milliseconds; a stall (a system waiting on the worker or on a file) would cost seconds.
const MAX_UPDATE: Duration = Duration::from_millis(500);

/// Every file the directory names, links followed, by content hash: what "nothing overwritten" compares.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("scratch model directory")
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let bytes = std::fs::read(&path).expect("model file");
            (path, Sha256::digest(&bytes).to_vec())
        })
        .collect()
}

/// Updates until `done` holds, timing every update; returns the longest.
fn update_timed(
    app: &mut App,
    mut done: impl FnMut(&mut World) -> bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut longest = Duration::ZERO;
    loop {
        let t = Instant::now();
        app.update();
        longest = longest.max(t.elapsed());
        if done(app.world_mut()) {
            return Ok(longest);
        }
        if start.elapsed() > DEADLINE {
            return Err(format!("not reached within {DEADLINE:?}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs the plugin on `dir`, waits for the load to fail, and checks the status, the fallback image, the update
/// times and the files; returns the error for the caller to match.
fn failed_load(case: &str, dir: &Path, verify_hashes: bool) -> Result<Arc<HeliosError>, String> {
    let before = snapshot(dir);
    let settings = HeliosSettings {
        model_dir: dir.to_path_buf(),
        providers: vec![Provider::Cpu],
        verify_hashes,
        ..default()
    };
    let (mut app, _assets) = test_app(settings);
    let e = app
        .world_mut()
        .spawn(HeliosScreen::new(PromptWeights::one("day")))
        .id();
    let mut failed = Collected::<HeliosLoadFailed>::new();
    let mut longest = update_timed(&mut app, |w| {
        failed.poll(w);
        !failed.items.is_empty()
    })?;
    // A few more frames: the app keeps running on the fallback.
    for _ in 0..30 {
        let t = Instant::now();
        app.update();
        longest = longest.max(t.elapsed());
    }
    let error = failed.items[0].error.clone();
    let status = app.world().resource::<HeliosStatus>();
    assert!(
        status
            .error()
            .is_some_and(|e| e.to_string() == error.to_string()),
        "{case}: the status is Failed with the same error: {status:?}"
    );
    let (stream, _) = screen(app.world(), e);
    assert_eq!(stream.showing(), Showing::Fallback, "{case}: fallback");
    assert_eq!(
        screen_pixels(app.world(), e),
        fallback_pixels(UVec2::splat(64)),
        "{case}: the screen shows the fallback image"
    );
    assert!(
        longest < MAX_UPDATE,
        "{case}: the longest update took {longest:?}"
    );
    assert_eq!(snapshot(dir), before, "{case}: no model file changed");
    eprintln!("{case}: {error} (longest update {longest:?})");
    Ok(error)
}

fn tiny() -> PathBuf {
    root().join("models/helios-tiny")
}

#[test]
fn an_absurd_manifest_number_fails_the_load_naming_the_field() -> Result<(), String> {
    let dir = scratch_model(&tiny(), "plugin-manifest", &[]).map_err(|e| e.to_string())?;
    let manifest = dir.join("manifest.ron");
    let text = std::fs::read_to_string(&manifest).map_err(|e| e.to_string())?;
    std::fs::write(
        &manifest,
        set_field(&text, "history_sizes", "[4000000000000, 2, 1]"),
    )
    .map_err(|e| e.to_string())?;
    let error = failed_load("manifest number", &dir, true)?;
    assert!(
        matches!(&*error, HeliosError::ManifestInvalid { field, .. } if field == "history_sizes"),
        "{error:?}"
    );
    std::fs::remove_dir_all(dir).map_err(|e| e.to_string())
}

#[test]
fn a_damaged_graph_fails_the_load_naming_the_file() -> Result<(), String> {
    let dir = scratch_model(&tiny(), "plugin-graph", &["denoiser_stage1.onnx"])
        .map_err(|e| e.to_string())?;
    let graph = dir.join("denoiser_stage1.onnx");
    let mut bytes = std::fs::read(&graph).map_err(|e| e.to_string())?;
    bytes.truncate(bytes.len() / 3);
    std::fs::write(&graph, &bytes).map_err(|e| e.to_string())?;
    // With hash checks the file is named before ONNX Runtime reads it.
    let error = failed_load("graph, hashes on", &dir, true)?;
    assert!(
        matches!(&*error, HeliosError::ModelCorrupt { path, .. } if path.ends_with("denoiser_stage1.onnx")),
        "{error:?}"
    );
    // Without them ONNX Runtime's parse error is still a typed error naming the file.
    let error = failed_load("graph, hashes off", &dir, false)?;
    assert!(
        matches!(&*error, HeliosError::ModelCorrupt { path, .. } if path.ends_with("denoiser_stage1.onnx")),
        "{error:?}"
    );
    std::fs::remove_dir_all(dir).map_err(|e| e.to_string())
}

#[test]
fn a_truncated_weights_file_fails_the_load_naming_that_file() -> Result<(), String> {
    let nano = root().join("models/helios-nano");
    let dir = scratch_model(&nano, "plugin-weights", &["vae_decoder.onnx.data"])
        .map_err(|e| e.to_string())?;
    let data = dir.join("vae_decoder.onnx.data");
    let bytes = std::fs::read(&data).map_err(|e| e.to_string())?;
    std::fs::write(&data, &bytes[..bytes.len() / 2]).map_err(|e| e.to_string())?;
    for verify in [true, false] {
        let error = failed_load(&format!("weights, hashes {verify}"), &dir, verify)?;
        assert!(
            matches!(&*error, HeliosError::ModelCorrupt { path, .. } if path.ends_with("vae_decoder.onnx.data")),
            "{error:?}"
        );
    }
    std::fs::remove_dir_all(dir).map_err(|e| e.to_string())
}

/// A screen with a bad prompt fails alone: its own `StreamFailed` and fallback, while another screen plays.
fn bad_prompt(case: &str, prompt: PromptWeights) -> Result<Arc<HeliosError>, String> {
    let settings = HeliosSettings {
        model_dir: tiny(),
        providers: vec![Provider::Cpu],
        ..default()
    };
    let (mut app, _assets) = test_app(settings);
    let bad = app.world_mut().spawn(HeliosScreen::new(prompt)).id();
    let good = app
        .world_mut()
        .spawn(HeliosScreen::new(PromptWeights::one("day")))
        .id();
    let mut failed = Collected::<StreamFailed>::new();
    let longest = update_timed(&mut app, |w| {
        failed.poll(w);
        !failed.items.is_empty() && screen(w, good).1.frames_shown >= 2
    })?;
    app.update();
    assert_eq!(failed.items[0].entity, bad, "{case}: the bad screen fails");
    assert_eq!(
        screen(app.world(), bad).0.showing(),
        Showing::Fallback,
        "{case}: the failed screen shows the fallback"
    );
    assert!(
        app.world().resource::<HeliosStatus>().is_ready(),
        "{case}: the model itself stays ready"
    );
    assert!(
        longest < MAX_UPDATE,
        "{case}: the longest update took {longest:?}"
    );
    let error = failed.items[0].error.clone();
    eprintln!("{case}: {error} (longest update {longest:?})");
    Ok(error)
}

#[test]
fn a_nan_prompt_weight_fails_only_its_screen() -> Result<(), String> {
    let error = bad_prompt(
        "NaN weight",
        PromptWeights::one("day").with("night", f32::NAN),
    )?;
    assert!(
        matches!(&*error, HeliosError::InvalidWeights { .. }),
        "{error:?}"
    );
    Ok(())
}

#[test]
fn a_huge_unknown_prompt_name_fails_only_its_screen_with_a_short_message() -> Result<(), String> {
    let name = "x".repeat(1 << 20);
    let error = bad_prompt("1 MB prompt name", PromptWeights::one(name))?;
    let message = error.to_string();
    assert!(
        message.len() < 400,
        "the message repeats at most ~100 characters of the name ({} bytes)",
        message.len()
    );
    Ok(())
}

/// Settings are numbers a game (or its options menu) feeds the plugin too: absurd ones are clamped where they are
/// used, so screens keep playing (or pause) and nothing panics or stalls.
#[test]
fn absurd_settings_keep_the_app_running() -> Result<(), String> {
    type Edit = fn(&mut HeliosSettings);
    // (case, edit); every screen must play, except with `max_streams` 0, which means 1.
    let cases: &[(&str, Edit)] = &[
        ("playout_fps NaN", |s| s.playout_fps = f32::NAN),
        ("playout_fps inf", |s| s.playout_fps = f32::INFINITY),
        ("playout_fps 0", |s| s.playout_fps = 0.0),
        ("playout_fps -24", |s| s.playout_fps = -24.0),
        ("min_playout_fps NaN", |s| s.min_playout_fps = f32::NAN),
        ("min_playout_fps inf", |s| s.min_playout_fps = f32::INFINITY),
        ("min_playout_fps above playout", |s| s.min_playout_fps = 1e9),
        ("chunks_ahead MAX", |s| s.chunks_ahead = usize::MAX),
        ("chunks_ahead 0", |s| s.chunks_ahead = 0),
        ("max_streams 0", |s| s.max_streams = 0),
        ("max_streams MAX", |s| s.max_streams = usize::MAX),
        ("crossfade_chunks MAX", |s| s.crossfade_chunks = u32::MAX),
        ("max_restarts MAX", |s| s.max_restarts = u32::MAX),
        ("cutscene_load_timeout MAX", |s| {
            s.cutscene_load_timeout = Duration::MAX
        }),
    ];
    for (case, edit) in cases {
        let mut settings = pattern_settings();
        edit(&mut settings);
        let (mut app, _assets) = test_app(settings);
        let screens: Vec<Entity> = ["day", "night"]
            .iter()
            .map(|p| {
                app.world_mut()
                    .spawn(HeliosScreen::new(PromptWeights::one(*p)))
                    .id()
            })
            .collect();
        app.update(); // Startup: the settings are made usable before anything reads them.
        let playing = app.world().resource::<HeliosSettings>().max_streams.min(2);
        // Every screen that may generate shows video...
        let mut longest = update_timed(&mut app, |w| {
            screens
                .iter()
                .filter(|&&e| screen(w, e).1.frames_shown >= 1)
                .count()
                >= playing
        })
        .map_err(|e| format!("{case}: {e}"))?;
        // ...and a prompt change (a crossfade) still reaches the screen.
        let first = *screens
            .iter()
            .find(|&&e| screen(app.world(), e).1.frames_shown >= 1)
            .ok_or("a playing screen")?;
        let before = screen(app.world(), first).1.frames_shown;
        app.world_mut()
            .get_mut::<HeliosScreen>(first)
            .ok_or("screen")?
            .prompt = PromptWeights::one("dusk");
        longest = longest.max(
            update_timed(&mut app, |w| screen(w, first).1.frames_shown >= before + 40)
                .map_err(|e| format!("{case}: after the prompt change: {e}"))?,
        );
        let shown: Vec<u64> = screens
            .iter()
            .map(|&e| screen(app.world(), e).1.frames_shown)
            .collect();
        let settings = app.world().resource::<HeliosSettings>();
        assert!(
            settings.playout_fps.is_finite()
                && settings.playout_fps > 0.0
                && (0.0..=settings.playout_fps).contains(&settings.min_playout_fps)
                && settings.chunks_ahead >= 1,
            "{case}: the settings were made usable: {settings:?}"
        );
        assert!(
            longest < MAX_UPDATE,
            "{case}: the longest update took {longest:?}"
        );
        assert!(
            app.world().resource::<HeliosStatus>().is_ready(),
            "{case}: the model stays ready"
        );
        eprintln!("{case}: frames shown {shown:?}, longest update {longest:?}");
    }
    Ok(())
}
