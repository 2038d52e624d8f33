//! Recording a screen: insert [`StreamRecorder`] on a screen entity and every frame it shows is
//! written, on a background thread, as numbered PNG files or one animated GIF. Remove the component
//! (or despawn the entity) to finish the file.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

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

/// Records the frames a screen shows. The writer runs on its own thread; if it falls behind, frames
/// are dropped and counted.
#[derive(Component, Debug)]
pub struct StreamRecorder {
    format: RecordFormat,
    tx: Option<Sender<(Vec<u8>, UVec2)>>,
    thread: Option<JoinHandle<()>>,
    sent: u64,
    dropped: u64,
}

impl StreamRecorder {
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

    /// Stops recording; the writer finishes the file on its thread.
    pub fn stop(&mut self) {
        self.tx = None;
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
