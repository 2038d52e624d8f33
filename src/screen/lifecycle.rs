//! A screen's stream from open to close: [`sync`] turns screen edits into worker requests (open,
//! restart on a new seed or a cutscene cut, prompt changes, reference images) and the screens' queues
//! into the scheduler's snapshots; [`take_arrivals`] moves arrived chunks into the screens' queues and
//! reports failed streams.

use bevy::platform::time::Instant;
use bevy::prelude::*;

use super::reference::{ReferenceImage, reference_pixels, request_readback};
use super::{HeliosScreen, HeliosStream, HeliosStreamStats, HeliosStreams, Showing};
use crate::core::stream::StreamConfig;
use crate::diagnostics::MainThreadCost;
use crate::settings::HeliosSettings;
use crate::status::StreamFailed;
use crate::worker::{Arrivals, StreamDemand, StreamSnapshot, ToWorker, WorkerOutbox};

/// PostUpdate (after visibility): opens, restarts and updates each screen's stream and describes what
/// every stream needs for the scheduler.
#[expect(
    clippy::too_many_arguments,
    reason = "screens, registry, outbox and the reference images"
)]
pub(crate) fn sync(
    mut screens: Query<(Entity, Ref<HeliosScreen>, &mut HeliosStream)>,
    mut registry: ResMut<HeliosStreams>,
    mut outbox: ResMut<WorkerOutbox>,
    mut demand: ResMut<StreamDemand>,
    settings: Res<HeliosSettings>,
    images: Res<Assets<Image>>,
    mut commands: Commands,
    cost: Res<MainThreadCost>,
) {
    let _cost = cost.measure();
    demand.0.clear();
    for (entity, screen, mut stream) in &mut screens {
        let stream = &mut *stream;
        let crossfade = screen
            .crossfade_chunks
            .unwrap_or(settings.crossfade_chunks)
            .max(1);
        if stream.id.is_none() || stream.opened_seed != screen.seed || stream.restart_requested {
            open(
                entity,
                &screen,
                stream,
                crossfade,
                &mut registry,
                &mut outbox,
            );
        } else if screen.is_changed()
            && stream
                .sent_prompt
                .as_ref()
                .is_none_or(|(p, c)| *p != screen.prompt || *c != crossfade)
            && let Some(id) = stream.id
        {
            outbox.push(ToWorker::SetPrompt {
                stream: id,
                weights: screen.prompt.clone(),
                crossfade_chunks: crossfade,
            });
            stream.sent_prompt = Some((screen.prompt.clone(), crossfade));
            stream.failed = None;
        }
        send_reference(&screen, stream, &images, &mut outbox, &mut commands);
        if let Some(id) = stream.id {
            demand.0.push(StreamSnapshot {
                stream: id,
                priority: screen.priority,
                on_screen: stream.on_screen,
                size: stream.apparent_size,
                paused: screen.paused,
                failed: stream.failed.is_some(),
                showing_video: stream.showing == Showing::Video,
                queued_frames: stream.queue.len(),
                balance: stream.balance,
                chunks_received: stream.chunks_received,
                chunk_limit: stream.chunk_limit,
            });
        }
    }
}

/// Opens the screen's stream (closing the one it had): fresh history at the screen's seed.
fn open(
    entity: Entity,
    screen: &HeliosScreen,
    stream: &mut HeliosStream,
    crossfade: u32,
    registry: &mut HeliosStreams,
    outbox: &mut WorkerOutbox,
) {
    if let Some(old) = stream.id.take() {
        registry.remove(old);
        outbox.push(ToWorker::Close { stream: old });
    }
    let id = registry.allocate(entity);
    outbox.push(ToWorker::Open {
        stream: id,
        config: StreamConfig {
            seed: screen.seed,
            prompt: screen.prompt.clone(),
            crossfade_chunks: crossfade,
        },
    });
    stream.id = Some(id);
    stream.restart_requested = false;
    stream.opened_seed = screen.seed;
    stream.sent_prompt = Some((screen.prompt.clone(), crossfade));
    stream.sent_image = None;
    stream.chunks_received = 0;
    stream.failed = None;
    stream.balance = 0.0;
    if stream.opened_at.is_none() || stream.showing != Showing::Video {
        stream.opened_at = Some(Instant::now());
        stream.first_frame_pending = true;
    }
}

/// Sends the screen's reference image when it changed; one that is not loaded yet is retried next frame.
fn send_reference(
    screen: &HeliosScreen,
    stream: &mut HeliosStream,
    images: &Assets<Image>,
    outbox: &mut WorkerOutbox,
    commands: &mut Commands,
) {
    let want = screen.image.as_ref().map(Handle::id);
    if want == stream.sent_image {
        return;
    }
    let (Some(id), Some(handle)) = (stream.id, screen.image.as_ref()) else {
        stream.sent_image = None;
        return;
    };
    let sent = match reference_pixels(images, handle) {
        ReferenceImage::Ready {
            rgba,
            width,
            height,
        } => {
            outbox.push(ToWorker::ConditionImage {
                stream: id,
                rgba,
                width,
                height,
            });
            true
        }
        ReferenceImage::OnGpu => {
            request_readback(commands, id, handle.clone());
            true
        }
        ReferenceImage::Missing => false,
    };
    if sent {
        stream.sent_image = want;
    }
}

/// PreUpdate, after the worker's replies are in: chunks into their screens' queues, failures onto the
/// screens and into [`StreamFailed`] messages. Replies for closed streams are dropped.
pub(crate) fn take_arrivals(
    mut arrivals: ResMut<Arrivals>,
    registry: Res<HeliosStreams>,
    mut screens: Query<(&mut HeliosStream, &mut HeliosStreamStats)>,
    real: Res<Time<Real>>,
    mut stream_failed: MessageWriter<StreamFailed>,
    cost: Res<MainThreadCost>,
) {
    if arrivals.chunks.is_empty() && arrivals.failures.is_empty() {
        return;
    }
    let _cost = cost.measure();
    let now = real.elapsed_secs_f64();
    for arrived in arrivals.chunks.drain(..) {
        let Some(entity) = registry.entity(arrived.stream) else {
            continue;
        };
        let Ok((mut s, mut stats)) = screens.get_mut(entity) else {
            continue;
        };
        if s.id != Some(arrived.stream) {
            continue;
        }
        let chunk = arrived.chunk;
        s.chunks_received = s.chunks_received.max(chunk.index + 1);
        s.frame_size = UVec2::new(chunk.width, chunk.height);
        stats.generated_fps = s.record_arrival(now, chunk.frames.len());
        stats.chunk_latency = arrived.elapsed.as_secs_f32();
        stats.chunks += 1;
        stats.last_chunk_index = Some(chunk.index);
        stats.last_chunk_prompt = Some(chunk.prompt);
        s.queue.extend(chunk.frames);
        stats.queue_depth = s.queue.len();
    }
    for (stream, error) in arrivals.failures.drain(..) {
        let Some(entity) = registry.entity(stream) else {
            continue;
        };
        if let Ok((mut s, _)) = screens.get_mut(entity)
            && s.id == Some(stream)
        {
            s.failed = Some(error.clone());
        }
        stream_failed.write(StreamFailed {
            entity,
            stream,
            error,
        });
    }
}
