//! Frame pacing: each screen plays its frame queue at [`HeliosSettings::playout_fps`], writing its
//! image only when a frame is due. If the worker falls behind, the last frame holds and the shortfall
//! is counted; if the app runs slower than the playout rate, frames are skipped to keep time.

use bevy::prelude::*;

use crate::diagnostics::{DROPPED_FRAMES, FIRST_FRAME_MS, HELD_FRAMES, MainThreadCost};
use crate::export::StreamRecorder;
use crate::screen::{
    HeliosScreen, HeliosStream, HeliosStreamStats, Showing, StreamState, attach, fallback_pixels,
    new_image,
};
use crate::settings::HeliosSettings;
use crate::status::HeliosStatus;

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

/// Advances every screen's playout clock and shows the frame that is due.
#[expect(
    clippy::type_complexity,
    reason = "the screen and its optional display targets"
)]
#[expect(
    clippy::too_many_arguments,
    reason = "screens, assets, clocks and metrics"
)]
pub(crate) fn playout(
    mut screens: Query<(
        &HeliosScreen,
        &mut HeliosStream,
        &mut HeliosStreamStats,
        Option<&mut MeshMaterial3d<StandardMaterial>>,
        Option<&mut ImageNode>,
        Option<&mut StreamRecorder>,
    )>,
    mut images: ResMut<Assets<Image>>,
    mut materials: Option<ResMut<Assets<StandardMaterial>>>,
    status: Res<HeliosStatus>,
    settings: Res<HeliosSettings>,
    time: Res<Time>,
    real: Res<Time<Real>>,
    mut diagnostics: bevy::diagnostic::Diagnostics,
    cost: Res<MainThreadCost>,
) {
    let _cost = cost.measure();
    let dur = settings.frame_duration();
    let dt = time.delta_secs_f64();
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
        if screen.paused {
            stats.state = StreamState::Paused;
            continue;
        }
        if !stream.on_screen {
            stats.state = StreamState::Hidden;
            continue;
        }

        let size = stream.frame_size;
        let frame = if stream.showing != Showing::Video {
            // First frame of a run: show it at once and start the clock.
            let Some(frame) = stream.queue.pop_front() else {
                stats.state = StreamState::Waiting;
                continue;
            };
            stream.clock = 0.0;
            stream.run_taken = 1;
            stream.frames_consumed += 1;
            stream.showing = Showing::Video;
            frame
        } else {
            stream.clock += dt;
            let due = (stream.clock / dur + 1e-9).floor() as u64 + 1;
            let want = due.saturating_sub(stream.run_taken);
            if want == 0 {
                continue;
            }
            let available = want.min(stream.queue.len() as u64);
            if available < want {
                // Generation is behind: hold the last frame, count the shortfall once, and restart the
                // clock from the last frame shown so playback resumes in step when frames arrive.
                stats.frames_held += want - available;
                held_now += want - available;
                stream.clock = (stream.run_taken + available - 1) as f64 * dur;
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
            stream.run_taken += available;
            stream.frames_consumed += available;
            match stream.queue.pop_front() {
                Some(frame) => frame,
                None => continue,
            }
        };
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
