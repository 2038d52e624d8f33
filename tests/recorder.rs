//! Screen recordings are complete when the game exits: a GIF still being written when `AppExit` arrives,
//! or when the app is dropped, holds every frame that was sent to its writer.
#![cfg(feature = "plugin")]

mod common;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bevy::prelude::*;
use bevy_helios::prelude::*;
use common::app::*;
use image::AnimationDecoder;
use image::codecs::gif::GifDecoder;

const DEADLINE: Duration = Duration::from_secs(30);
/// Frames sent to the writer before the app exits.
const FRAMES: u64 = 12;

fn gif_path(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("recorder_{name}.gif"));
    let _ = std::fs::remove_file(&path);
    path
}

/// The frames of the GIF at `path`, decoded to the end (fails on a cut file).
fn decoded_frames(path: &Path) -> Result<usize, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let decoder = GifDecoder::new(BufReader::new(file))
        .map_err(|e| format!("{} is not a GIF: {e}", path.display()))?;
    decoder
        .into_frames()
        .collect_frames()
        .map(|f| f.len())
        .map_err(|e| format!("{} is cut: {e}", path.display()))
}

/// A pattern screen recording a GIF, updated until `FRAMES` frames went to the writer.
fn recording_app(path: &Path) -> Result<(App, Entity), String> {
    let (mut app, _dir) = test_app(pattern_settings());
    let e = app
        .world_mut()
        .spawn((
            HeliosScreen::new(PromptWeights::one("day")).with_seed(1),
            ScreenRecorder::gif(path, 24.0),
        ))
        .id();
    update_until(&mut app, DEADLINE, |w| {
        w.get::<ScreenRecorder>(e)
            .is_some_and(|r| r.frames() >= FRAMES)
    })?;
    Ok((app, e))
}

#[test]
fn a_gif_is_complete_right_after_app_exit() -> Result<(), String> {
    let path = gif_path("exit");
    let (mut app, e) = recording_app(&path)?;
    app.world_mut().write_message(AppExit::Success);
    app.update();
    assert!(app.should_exit().is_some(), "the app saw its AppExit");
    let recorder = app.world().get::<ScreenRecorder>(e).ok_or("no recorder")?;
    let sent = recorder.frames();
    // The app (and the recorder) are still alive: only the exit handling finished the file.
    let decoded = decoded_frames(&path)?;
    assert_eq!(
        decoded as u64, sent,
        "the GIF holds every frame sent to the writer before exit"
    );
    assert!(
        recorder.is_finished(),
        "the exit waited for the writer to finish the GIF"
    );
    Ok(())
}

#[test]
fn a_gif_is_complete_right_after_the_app_is_dropped() -> Result<(), String> {
    let path = gif_path("drop");
    let (app, e) = recording_app(&path)?;
    let sent = app
        .world()
        .get::<ScreenRecorder>(e)
        .ok_or("no recorder")?
        .frames();
    drop(app);
    let decoded = decoded_frames(&path)?;
    assert_eq!(
        decoded as u64, sent,
        "dropping the recorder waited for the writer to finish the GIF"
    );
    Ok(())
}

#[test]
fn a_gif_removed_during_play_is_complete_after_app_exit() -> Result<(), String> {
    let path = gif_path("removed");
    let (mut app, e) = recording_app(&path)?;
    let sent = app
        .world()
        .get::<ScreenRecorder>(e)
        .ok_or("no recorder")?
        .frames();
    // The screen goes away during play: its writer finishes in the background.
    app.world_mut().despawn(e);
    app.update();
    app.world_mut().write_message(AppExit::Success);
    app.update();
    let decoded = decoded_frames(&path)?;
    assert_eq!(
        decoded as u64, sent,
        "exit waited for the writer of the removed recorder"
    );
    Ok(())
}
