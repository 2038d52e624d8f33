//! Recording a screen: insert [`ScreenRecorder`] on a screen entity and every frame it shows is
//! written, on a background thread, as numbered PNG files or one animated GIF.
//!
//! [`ScreenRecorder::stop`] ends the recording and lets the writer finish the file in the background.
//! Removing the component, despawning the entity or exiting the app (an [`AppExit`] message, seen by
//! `finish_on_exit` in `Last`) also stops it and then waits for the writer, at most
//! [`FINISH_TIMEOUT`], so a GIF being written when the game quits is complete.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
/// Dropping it (removing the component, despawning the screen, exiting) waits for the writer to finish
/// the file, up to [`FINISH_TIMEOUT`]; call [`stop`](Self::stop) first to let it finish in the background.
#[derive(Component, Debug)]
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
        let deadline = Instant::now() + timeout;
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                tracing::warn!(
                    "helios: the recording to {:?} was not finished after {timeout:?}; it may be cut",
                    self.format
                );
                self.thread = Some(thread);
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if thread.join().is_err() {
            tracing::error!("helios: the writer of {:?} panicked", self.format);
        }
        true
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

/// On [`AppExit`], stops every recording and waits for its file (each at most [`FINISH_TIMEOUT`]).
/// Runs in `Last`, so frames shown in the exiting frame are in the file.
pub(crate) fn finish_on_exit(
    mut exit: MessageReader<AppExit>,
    mut recorders: Query<&mut ScreenRecorder>,
) {
    if exit.read().last().is_none() {
        return;
    }
    for mut recorder in &mut recorders {
        recorder.finish(FINISH_TIMEOUT);
    }
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
