//! Frame pacing: each screen plays its frame queue at the rate the scheduler gave it (the full
//! [`HeliosSettings::playout_fps`] when generation keeps up; otherwise what the screen's share of the
//! generator sustains, down to [`HeliosSettings::min_playout_fps`]), writing its image only when a frame
//! is due. If the next frame is not generated yet, the last frame holds and the hold is measured; if the
//! app runs slower than the playout rate, frames are skipped to keep time.

use std::time::Duration;

use bevy::prelude::*;

use crate::diagnostics::{
    DROPPED_FRAMES, FIRST_FRAME_MS, FREEZE_MS, HELD_FRAMES, MAIN_THREAD_MS, MainThreadCost,
    QUEUE_DEPTH, STREAM_FPS,
};
use crate::recorder::ScreenRecorder;
use crate::screen::display::{attach, new_image};
use crate::screen::{
    HeliosScreen, HeliosStream, HeliosStreamStats, Showing, StreamState, fallback_pixels,
};
use crate::settings::HeliosSettings;
use crate::status::{HeliosModelInfo, HeliosStatus};
use crate::worker::GeneratorLoad;

/// Writes a frame into the screen's image (moving the bytes), or makes a new image if the size changed.
fn show(
    stream: &mut HeliosStream,
    frame: Vec<u8>,
    size: UVec2,
    images: &mut Assets<Image>,
    material: Option<Mut<MeshMaterial3d<StandardMaterial>>>,
    node: Option<Mut<ImageNode>>,
    materials: Option<&mut Assets<StandardMaterial>>,
) {
    let fits = images
        .get(&stream.image)
        .is_some_and(|img| img.width() == size.x && img.height() == size.y);
    if fits && let Some(mut image) = images.get_mut(&stream.image) {
        image.data = Some(frame);
        return;
    }
    stream.image = images.add(new_image(size, frame));
    attach(&stream.image, material, node, materials);
}

/// Advances every screen's playout clock at its rate and shows the frame that is due.
#[expect(
    clippy::type_complexity,
    reason = "the screen and its optional display targets"
)]
#[expect(
    clippy::too_many_arguments,
    reason = "screens, assets, clocks, rates and metrics"
)]
pub(crate) fn playout(
    mut screens: Query<(
        &HeliosScreen,
        &mut HeliosStream,
        &mut HeliosStreamStats,
        Option<&mut MeshMaterial3d<StandardMaterial>>,
        Option<&mut ImageNode>,
        Option<&mut ScreenRecorder>,
    )>,
    mut images: ResMut<Assets<Image>>,
    mut materials: Option<ResMut<Assets<StandardMaterial>>>,
    status: Res<HeliosStatus>,
    settings: Res<HeliosSettings>,
    load: Res<GeneratorLoad>,
    info: Option<Res<HeliosModelInfo>>,
    time: Res<Time>,
    real: Res<Time<Real>>,
    mut diagnostics: bevy::diagnostic::Diagnostics,
    cost: Res<MainThreadCost>,
) {
    let _cost = cost.measure();
    let dt = time.delta_secs_f64();
    let now = time.elapsed_secs_f64();
    // A stream's balance (frames played beyond its share) remembers at most two chunks.
    let balance_cap = 2.0 * info.as_ref().map_or(33, |i| i.frames_per_chunk) as f32;
    let model_failed = status.error().is_some();
    let (mut dropped_now, mut held_now) = (0u64, 0u64);
    for (screen, mut stream, mut stats, material, node, recorder) in &mut screens {
        let stream = &mut *stream;
        // Twice a second, turn shown frames into a rate.
        stats.fps_window.0 += real.delta_secs_f64();
        if stats.fps_window.0 >= 0.5 {
            stats.fps = (f64::from(stats.fps_window.1) / stats.fps_window.0) as f32;
            stats.fps_window = (0.0, 0);
        }
        stats.queue_depth = stream.queue.len();

        if model_failed || stream.failed.is_some() {
            stats.state = StreamState::Failed;
            stream.frozen_since = None;
            if stream.showing != Showing::Fallback {
                let size = images
                    .get(&stream.image)
                    .map_or(UVec2::splat(64), |i| i.size());
                show(
                    stream,
                    fallback_pixels(size),
                    size,
                    &mut images,
                    material,
                    node,
                    materials.as_deref_mut(),
                );
                stream.showing = Showing::Fallback;
            }
            continue;
        }
        if screen.paused || !stream.on_screen {
            stats.state = if screen.paused {
                StreamState::Paused
            } else {
                StreamState::Hidden
            };
            stream.frozen_since = None;
            continue;
        }
        // The scheduler's rate for this stream; a stream it does not serve now (pre-empted by a
        // cutscene, over `max_streams`) plays what it has at the floor rate, owing nothing.
        let rate = stream.id.and_then(|id| load.schedule().rate(id).copied());
        let playout_fps = rate.map_or(settings.min_playout_fps, |r| {
            r.playout_fps(stream.queue.len())
        });
        stats.playout_fps = playout_fps;
        stats.share_fps = rate.map_or(0.0, |r| r.share_fps);

        let size = stream.frame_size;
        let frame = if stream.showing != Showing::Video {
            // First frame of a run: show it at once and start the clock.
            let Some(frame) = stream.queue.pop_front() else {
                stats.state = StreamState::Waiting;
                continue;
            };
            stream.phase = 0.0;
            stream.frames_consumed += 1;
            stream.showing = Showing::Video;
            frame
        } else {
            if let Some(rate) = rate {
                stream.balance = (stream.balance - (dt * f64::from(rate.share_fps)) as f32)
                    .clamp(-balance_cap, balance_cap);
            }
            stream.phase += dt * f64::from(playout_fps.max(0.1));
            if stream.frozen_since.is_some() && !stream.queue.is_empty() {
                // The frame it was holding for has arrived: show it now, not a period later.
                stream.phase = stream.phase.max(1.0);
            }
            let want = stream.phase.floor() as u64;
            if want == 0 {
                continue;
            }
            let available = want.min(stream.queue.len() as u64);
            if available < want {
                // Generation is behind: hold the last frame, count the shortfall, and restart the
                // clock so playback resumes in step when frames arrive.
                stats.frames_held += want - available;
                held_now += want - available;
                stream.phase = 0.0;
                if available == 0 {
                    stream.frozen_since.get_or_insert(now);
                }
            } else {
                stream.phase -= want as f64;
            }
            if available == 0 {
                stats.state = StreamState::Waiting;
                continue;
            }
            for _ in 1..available {
                stream.queue.pop_front();
            }
            stats.frames_dropped += available - 1;
            dropped_now += available - 1;
            stream.frames_consumed += available;
            if rate.is_some() {
                stream.balance = (stream.balance + available as f32).min(balance_cap);
            }
            match stream.queue.pop_front() {
                Some(frame) => frame,
                None => continue,
            }
        };
        if let Some(since) = stream.frozen_since.take() {
            let freeze = Duration::from_secs_f64((now - since).max(0.0));
            stats.frozen += freeze;
            stats.longest_freeze = stats.longest_freeze.max(freeze);
            diagnostics.add_measurement(&FREEZE_MS, || freeze.as_secs_f64() * 1000.0);
        }
        stats.state = StreamState::Playing;
        stats.frames_shown += 1;
        stats.fps_window.1 += 1;
        stats.queue_depth = stream.queue.len();
        if stream.first_frame_pending {
            stream.first_frame_pending = false;
            if let Some(opened) = stream.opened_at {
                let latency = opened.elapsed();
                stats.first_frame_latency = Some(latency);
                diagnostics.add_measurement(&FIRST_FRAME_MS, || latency.as_secs_f64() * 1000.0);
            }
        }
        if let Some(mut recorder) = recorder {
            recorder.push(&frame, size);
        }
        show(
            stream,
            frame,
            size,
            &mut images,
            material,
            node,
            materials.as_deref_mut(),
        );
    }
    diagnostics.add_measurement(&DROPPED_FRAMES, || dropped_now as f64);
    diagnostics.add_measurement(&HELD_FRAMES, || held_now as f64);
}

/// Last in the frame: aggregates the screens' stats and the main-thread cost.
pub(crate) fn record_diagnostics(
    stats: Query<&HeliosStreamStats>,
    cost: Res<MainThreadCost>,
    mut diagnostics: bevy::diagnostic::Diagnostics,
) {
    let guard = cost.measure();
    let mut playing = 0usize;
    let mut fps = 0.0f64;
    let mut min_queue = usize::MAX;
    for s in &stats {
        if s.state == StreamState::Playing {
            playing += 1;
            fps += f64::from(s.fps);
            min_queue = min_queue.min(s.queue_depth);
        }
    }
    if playing > 0 {
        diagnostics.add_measurement(&STREAM_FPS, || fps / playing as f64);
        diagnostics.add_measurement(&QUEUE_DEPTH, || min_queue as f64);
    }
    drop(guard);
    diagnostics.add_measurement(&MAIN_THREAD_MS, || cost.take());
}
