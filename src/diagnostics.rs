//! Metrics as Bevy diagnostics (read them from `DiagnosticsStore`, the inspector, or Bevy's
//! `LogDiagnosticsPlugin` / `DiagnosticsOverlay`). Per-screen numbers are on each screen's
//! [`HeliosStreamStats`](crate::screen::HeliosStreamStats); these paths aggregate over the screens that
//! are playing (measured in [`playout`](crate::playout)).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bevy::diagnostic::{Diagnostic, DiagnosticPath, RegisterDiagnostic};
use bevy::prelude::*;

/// Mean frames shown per second over playing screens.
pub const STREAM_FPS: DiagnosticPath = DiagnosticPath::const_new("helios/stream/fps");
/// Wall time the worker spent on each chunk, milliseconds.
pub const CHUNK_LATENCY_MS: DiagnosticPath =
    DiagnosticPath::const_new("helios/stream/chunk_latency_ms");
/// Fewest frames queued among playing screens (0 = a screen is about to hold its frame).
pub const QUEUE_DEPTH: DiagnosticPath = DiagnosticPath::const_new("helios/stream/queue_depth");
/// From opening a stream to its first frame on screen, milliseconds (one measurement per stream).
pub const FIRST_FRAME_MS: DiagnosticPath =
    DiagnosticPath::const_new("helios/stream/first_frame_ms");
/// Frames skipped this app frame because several were due at once.
pub const DROPPED_FRAMES: DiagnosticPath =
    DiagnosticPath::const_new("helios/stream/dropped_frames");
/// Frames that were due this app frame but not generated yet (the last frame held).
pub const HELD_FRAMES: DiagnosticPath = DiagnosticPath::const_new("helios/stream/held_frames");
/// Frames the generator makes per second of its own time, all streams together (measured per chunk).
pub const GENERATED_FPS: DiagnosticPath = DiagnosticPath::const_new("helios/worker/generated_fps");
/// Streams the generator can keep at the full playout rate (`generated_fps / playout_fps`).
pub const FULL_RATE_STREAMS: DiagnosticPath =
    DiagnosticPath::const_new("helios/worker/full_rate_streams");
/// A screen's hold on one frame that just ended (a frame was due but not generated), milliseconds.
pub const FREEZE_MS: DiagnosticPath = DiagnosticPath::const_new("helios/stream/freeze_ms");
/// Open streams.
pub const ACTIVE_STREAMS: DiagnosticPath = DiagnosticPath::const_new("helios/streams");
/// Messages for the worker that waited a frame because its channel was full.
pub const SEND_RETRIES: DiagnosticPath = DiagnosticPath::const_new("helios/worker/send_retries");
/// Time the plugin's systems and observers spent on the main thread this frame, milliseconds.
pub const MAIN_THREAD_MS: DiagnosticPath = DiagnosticPath::const_new("helios/main_thread_ms");

/// Every path above.
pub const ALL: [DiagnosticPath; 12] = [
    STREAM_FPS,
    GENERATED_FPS,
    FULL_RATE_STREAMS,
    FREEZE_MS,
    CHUNK_LATENCY_MS,
    QUEUE_DEPTH,
    FIRST_FRAME_MS,
    DROPPED_FRAMES,
    HELD_FRAMES,
    ACTIVE_STREAMS,
    SEND_RETRIES,
    MAIN_THREAD_MS,
];

/// Registers the paths (called from `HeliosPlugin::build`).
pub(crate) fn register(app: &mut App) {
    for path in ALL {
        let suffix = if path.as_str().ends_with("_ms") {
            "ms"
        } else {
            ""
        };
        app.register_diagnostic(Diagnostic::new(path).with_suffix(suffix));
    }
}

/// Nanoseconds the plugin spent on the main thread since the last `record`. Shared (not `ResMut`)
/// so measuring never serialises systems.
#[derive(Resource, Clone, Debug, Default)]
pub struct MainThreadCost(Arc<AtomicU64>);

impl MainThreadCost {
    /// Starts timing; the time is added when the guard drops.
    pub fn measure(&self) -> CostGuard<'_> {
        CostGuard {
            total: &self.0,
            started: Instant::now(),
        }
    }

    /// Takes the accumulated time.
    pub(crate) fn take(&self) -> f64 {
        self.0.swap(0, Ordering::Relaxed) as f64 / 1e6
    }
}

/// Adds the time since [`MainThreadCost::measure`] when dropped.
#[derive(Debug)]
pub struct CostGuard<'a> {
    total: &'a AtomicU64,
    started: Instant,
}

impl Drop for CostGuard<'_> {
    fn drop(&mut self) {
        self.total
            .fetch_add(self.started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}
