//! Recording a screen: insert [`ScreenRecorder`] on a screen entity and every frame it shows is
//! written, on a background thread, as numbered PNG files or one animated GIF.
//!
//! [`ScreenRecorder::stop`] ends the recording and lets the writer finish the file in the background.
//! Removing the component or despawning the entity during play does the same (the frame never waits for
//! the writer). Exiting the app (an [`AppExit`] message, seen by `finish_on_exit` in `Last`) stops every
//! recording and waits for every writer, removed ones included, at most [`FINISH_TIMEOUT`] each, so a GIF
//! being written when the game quits is complete; so does dropping the app.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bevy::ecs::lifecycle::HookContext;
use bevy::ecs::world::DeferredWorld;
use bevy::prelude::*;
use crossbeam_channel::{Sender, TrySendError};
use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame, RgbaImage};

/// What a recording writes.
#[derive(Clone, Debug, PartialEq)]
pub enum RecordFormat {
    /// `frame_00000.png`, `frame_00001.png`, ... in a directory.
    PngFrames(PathBuf),
    /// One looping GIF at the given frame rate.
    Gif {
        /// The file.
        path: PathBuf,
        /// Frames per second of the GIF.
        fps: f32,
    },
}

/// Frames queued for the writer before new ones are dropped.
const RECORD_QUEUE: usize = 64;

/// How long exit and drop wait for a writer to finish its file (at most `RECORD_QUEUE` queued frames)
/// before they give up, log it and leave the thread behind.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Records the frames a screen shows. The writer runs on its own thread; if it falls behind, frames
/// are dropped and counted.
///
/// Removing the component or despawning the screen with the plugin running stops the recording and lets
/// the writer finish in the background (exit waits for it). Dropping it otherwise (a dropped app, no
/// plugin) waits for the writer to finish the file, up to [`FINISH_TIMEOUT`].
#[derive(Component, Debug)]
#[component(on_remove = hand_over_writer)]
pub struct ScreenRecorder {
    format: RecordFormat,
    tx: Option<Sender<(Vec<u8>, UVec2)>>,
    thread: Option<JoinHandle<()>>,
    sent: u64,
    dropped: u64,
}

/// The old name of [`ScreenRecorder`].
#[deprecated(since = "0.2.0", note = "renamed to `ScreenRecorder`")]
pub type StreamRecorder = ScreenRecorder;

impl ScreenRecorder {
    /// Starts a recording.
    pub fn start(format: RecordFormat) -> Self {
        let (tx, rx) = crossbeam_channel::bounded::<(Vec<u8>, UVec2)>(RECORD_QUEUE);
        let writer = format.clone();
        let thread = std::thread::Builder::new()
            .name("helios-recorder".into())
            .spawn(move || {
                let result = match &writer {
                    RecordFormat::PngFrames(dir) => write_pngs(dir, rx.iter()),
                    RecordFormat::Gif { path, fps } => write_gif(path, *fps, rx.iter()),
                };
                match result {
                    Ok(n) => tracing::info!("helios: recorded {n} frames to {writer:?}"),
                    Err(e) => tracing::error!("helios: recording to {writer:?} failed: {e}"),
                }
            });
        let (tx, thread) = match thread {
            Ok(t) => (Some(tx), Some(t)),
            Err(e) => {
                tracing::error!("helios: cannot start the recorder thread: {e}");
                (None, None)
            }
        };
        Self {
            format,
            tx,
            thread,
            sent: 0,
            dropped: 0,
        }
    }

    /// Numbered PNG files in `dir`.
    pub fn png_frames(dir: impl Into<PathBuf>) -> Self {
        Self::start(RecordFormat::PngFrames(dir.into()))
    }

    /// One GIF at `fps`.
    pub fn gif(path: impl Into<PathBuf>, fps: f32) -> Self {
        Self::start(RecordFormat::Gif {
            path: path.into(),
            fps,
        })
    }

    /// What is being written.
    pub fn format(&self) -> &RecordFormat {
        &self.format
    }

    /// Frames handed to the writer.
    pub fn frames(&self) -> u64 {
        self.sent
    }

    /// Frames dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// True once the writer thread has written everything (after the recorder stopped).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops recording; the writer finishes the file on its thread ([`is_finished`](Self::is_finished)
    /// says when).
    pub fn stop(&mut self) {
        self.tx = None;
    }

    /// True once [`stop`](Self::stop) (or [`finish`](Self::finish)) was called or the writer failed.
    pub fn is_stopped(&self) -> bool {
        self.tx.is_none()
    }

    /// Stops recording and waits up to `timeout` for the writer to finish the file. Returns true when
    /// it did (or there was no writer); false when it is still writing, which is logged.
    pub fn finish(&mut self, timeout: Duration) -> bool {
        self.tx = None;
        let Some(thread) = self.thread.take() else {
            return true;
        };
        self.thread = join_within(&self.format, thread, timeout);
        self.thread.is_none()
    }

    /// Hands a shown frame to the writer (a copy: the original goes into the screen's image).
    pub(crate) fn push(&mut self, rgba: &[u8], size: UVec2) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send((rgba.to_vec(), size)) {
            Ok(()) => self.sent += 1,
            Err(TrySendError::Full(_)) => self.dropped += 1,
            Err(TrySendError::Disconnected(_)) => self.tx = None,
        }
    }
}

impl Drop for ScreenRecorder {
    fn drop(&mut self) {
        self.finish(FINISH_TIMEOUT);
    }
}

/// Waits up to `timeout` for a writer thread; returns it when it is still writing (logged).
fn join_within(
    format: &RecordFormat,
    thread: JoinHandle<()>,
    timeout: Duration,
) -> Option<JoinHandle<()>> {
    let deadline = Instant::now() + timeout;
    while !thread.is_finished() {
        if Instant::now() >= deadline {
            tracing::warn!(
                "helios: the recording to {format:?} was not finished after {timeout:?}; it may be cut"
            );
            return Some(thread);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if thread.join().is_err() {
        tracing::error!("helios: the writer of {format:?} panicked");
    }
    None
}

/// Writers of recorders removed during play, finishing their files in the background; exit (or
/// dropping the app) waits for them.
#[derive(Resource, Default)]
pub(crate) struct FinishingRecordings(Vec<(RecordFormat, JoinHandle<()>)>);

impl FinishingRecordings {
    /// Waits for every writer, each at most `timeout`.
    fn finish_all(&mut self, timeout: Duration) {
        for (format, thread) in self.0.drain(..) {
            join_within(&format, thread, timeout);
        }
    }
}

impl Drop for FinishingRecordings {
    fn drop(&mut self) {
        self.finish_all(FINISH_TIMEOUT);
    }
}

/// `on_remove` of [`ScreenRecorder`]: a recorder removed during play (component removed, screen
/// despawned) must not stall the frame while its writer encodes what is queued, so its writer moves to
/// [`FinishingRecordings`]. Without that resource (no plugin) the recorder's `Drop` waits as before.
fn hand_over_writer(mut world: DeferredWorld, ctx: HookContext) {
    if !world.contains_resource::<FinishingRecordings>() {
        return;
    }
    let Some(mut recorder) = world.get_mut::<ScreenRecorder>(ctx.entity) else {
        return;
    };
    recorder.stop();
    let Some(thread) = recorder.thread.take() else {
        return;
    };
    let format = recorder.format.clone();
    let mut finishing = world.resource_mut::<FinishingRecordings>();
    // Writers that are done are joined now, so the list holds only the ones still writing.
    let (done, writing) = std::mem::take(&mut finishing.0)
        .into_iter()
        .partition::<Vec<_>, _>(|(_, t)| t.is_finished());
    finishing.0 = writing;
    finishing.0.push((format, thread));
    for (format, thread) in done {
        join_within(&format, thread, Duration::ZERO);
    }
}

/// On [`AppExit`], stops every recording and waits for its file and for the writers of removed
/// recorders (each at most [`FINISH_TIMEOUT`]). Runs in `Last`, so frames shown in the exiting frame are
/// in the file.
pub(crate) fn finish_on_exit(
    mut exit: MessageReader<AppExit>,
    mut recorders: Query<&mut ScreenRecorder>,
    mut finishing: ResMut<FinishingRecordings>,
) {
    if exit.read().last().is_none() {
        return;
    }
    for mut recorder in &mut recorders {
        recorder.finish(FINISH_TIMEOUT);
    }
    finishing.finish_all(FINISH_TIMEOUT);
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn write_pngs(
    dir: &Path,
    frames: impl Iterator<Item = (Vec<u8>, UVec2)>,
) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut n = 0;
    for (rgba, size) in frames {
        let img = RgbaImage::from_raw(size.x, size.y, rgba)
            .ok_or_else(|| io_err("frame size mismatch"))?;
        img.save(dir.join(format!("frame_{n:05}.png")))
            .map_err(io_err)?;
        n += 1;
    }
    Ok(n)
}

fn write_gif(
    path: &Path,
    fps: f32,
    frames: impl Iterator<Item = (Vec<u8>, UVec2)>,
) -> std::io::Result<usize> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut encoder = GifEncoder::new_with_speed(BufWriter::new(File::create(path)?), 10);
    encoder.set_repeat(Repeat::Infinite).map_err(io_err)?;
    let delay = Delay::from_numer_denom_ms(1000, fps.max(1.0).round() as u32);
    let mut n = 0;
    for (rgba, size) in frames {
        let img = RgbaImage::from_raw(size.x, size.y, rgba)
            .ok_or_else(|| io_err("frame size mismatch"))?;
        encoder
            .encode_frame(Frame::from_parts(img, 0, 0, delay))
            .map_err(io_err)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorder_removed_during_play_hands_its_writer_over_instead_of_waiting() {
        let path = std::env::temp_dir().join(format!("helios-recorder-{}.gif", std::process::id()));
        let mut world = World::new();
        world.init_resource::<FinishingRecordings>();
        let mut recorder = ScreenRecorder::gif(&path, 24.0);
        for _ in 0..4 {
            recorder.push(&[128u8; 16 * 16 * 4], UVec2::new(16, 16));
        }
        let e = world.spawn(recorder).id();
        world.despawn(e);
        let finishing = world.resource::<FinishingRecordings>();
        assert_eq!(
            finishing.0.len(),
            1,
            "the despawn moved the writer to FinishingRecordings rather than joining it"
        );
        world
            .resource_mut::<FinishingRecordings>()
            .finish_all(FINISH_TIMEOUT);
        let _ = std::fs::remove_file(&path);
    }
}
