//! The app side of the `helios-worker` thread: [`WorkerHandle`] (the channels and the thread),
//! [`WorkerOutbox`] (messages waiting for room in the channel), and the systems that start the
//! worker, take its replies ([`receive`]) and send it work ([`dispatch`]). Systems only `try_send`
//! and `try_iter`; see [`thread`] for the side that blocks.

pub mod protocol;
pub mod scheduler;
pub(crate) mod thread;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use bevy::diagnostic::Diagnostics;
use bevy::platform::time::Instant;
use bevy::prelude::*;
use crossbeam_channel::{Receiver, Sender, TrySendError};

pub use protocol::{ChunkRequest, FromWorker, ToWorker};
pub use scheduler::{ScheduleParams, StreamSnapshot};

use crate::conditioning::{ReferenceImage, reference_pixels};
use crate::core::stream::StreamConfig;
use crate::diagnostics::{ACTIVE_STREAMS, CHUNK_LATENCY_MS, MainThreadCost, SEND_RETRIES};
use crate::screen::{HeliosScreen, HeliosStream, HeliosStreamStats, HeliosStreams, Showing};
use crate::settings::HeliosSettings;
use crate::status::{HeliosLoadFailed, HeliosModelInfo, HeliosStatus, StreamFailed, WorkerCrashed};

/// Messages app → worker that fit before the channel pushes back.
const TO_WORKER_CAPACITY: usize = 64;
/// Replies worker → app; chunks are large, so few: this is the worker's back-pressure.
const FROM_WORKER_CAPACITY: usize = 8;

/// The worker thread and its channels. Inserted in `Startup`; dropping it (app exit) stops the thread
/// and joins it (at most one chunk's time).
#[derive(Resource)]
pub struct WorkerHandle {
    to_worker: Sender<ToWorker>,
    from_worker: Receiver<FromWorker>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Starts the `helios-worker` thread; it begins loading the model at once.
    pub fn spawn(settings: &HeliosSettings) -> std::io::Result<Self> {
        let (to_worker, worker_rx) = crossbeam_channel::bounded(TO_WORKER_CAPACITY);
        let (worker_tx, from_worker) = crossbeam_channel::bounded(FROM_WORKER_CAPACITY);
        let stop = Arc::new(AtomicBool::new(false));
        let config = thread::WorkerConfig {
            backend: settings.backend.clone(),
            request: settings.load_request(),
            max_restarts: settings.max_restarts,
        };
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("helios-worker".into())
            .spawn(move || thread::run(config, worker_rx, worker_tx, thread_stop))?;
        Ok(Self {
            to_worker,
            from_worker,
            stop,
            thread: Some(thread),
        })
    }

    /// Sends without blocking.
    pub fn try_send(&self, msg: ToWorker) -> Result<(), TrySendError<ToWorker>> {
        self.to_worker.try_send(msg)
    }

    /// Replies waiting now, without blocking.
    pub fn try_iter(&self) -> impl Iterator<Item = FromWorker> + '_ {
        self.from_worker.try_iter()
    }

    /// True while the thread runs.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.to_worker.try_send(ToWorker::Shutdown);
        // Dropping our receiver fails the worker's pending `send`, so it can't stay blocked on a full
        // reply channel; the stop flag ends it between jobs.
        self.from_worker = crossbeam_channel::never();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("helios-worker panicked while stopping");
        }
    }
}

/// Messages for the worker that did not fit in the channel yet, newest kept per stream.
#[derive(Resource, Debug, Default)]
pub struct WorkerOutbox {
    queue: VecDeque<ToWorker>,
    retries: u64,
    superseded: u64,
}

impl WorkerOutbox {
    /// Queues a message; an older one it makes pointless (the previous plan, prompt or image of the
    /// same stream) is dropped.
    pub fn push(&mut self, msg: ToWorker) {
        let before = self.queue.len();
        self.queue.retain(|old| !old.superseded_by(&msg));
        self.superseded += (before - self.queue.len()) as u64;
        self.queue.push_back(msg);
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Sends what fits; the rest waits for the next frame.
    fn flush(&mut self, handle: &WorkerHandle) -> u64 {
        let mut retried = 0;
        while let Some(msg) = self.queue.pop_front() {
            match handle.try_send(msg) {
                Ok(()) => {}
                Err(TrySendError::Full(msg)) => {
                    self.queue.push_front(msg);
                    self.retries += 1;
                    retried += 1;
                    break;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.queue.clear();
                    break;
                }
            }
        }
        retried
    }
}

/// Startup: starts the worker thread (model loading happens there).
pub(crate) fn spawn_worker(
    mut commands: Commands,
    settings: Res<HeliosSettings>,
    mut status: ResMut<HeliosStatus>,
    mut failed: MessageWriter<HeliosLoadFailed>,
) {
    match WorkerHandle::spawn(&settings) {
        Ok(handle) => {
            *status = HeliosStatus::Loading {
                stage: "starting".into(),
                progress: 0.0,
            };
            commands.insert_resource(handle);
        }
        Err(e) => {
            let error = Arc::new(crate::error::HeliosError::InvalidInput(format!(
                "could not start the helios-worker thread: {e}"
            )));
            tracing::error!("{error}");
            *status = HeliosStatus::Failed(error.clone());
            failed.write(HeliosLoadFailed { error });
        }
    }
}

/// PreUpdate: takes the worker's replies: status, chunks into frame queues, failures into messages.
#[expect(
    clippy::too_many_arguments,
    reason = "one system routes every kind of reply"
)]
pub(crate) fn receive(
    handle: Option<Res<WorkerHandle>>,
    mut status: ResMut<HeliosStatus>,
    registry: Res<HeliosStreams>,
    mut screens: Query<(&mut HeliosStream, &mut HeliosStreamStats)>,
    mut commands: Commands,
    mut load_failed: MessageWriter<HeliosLoadFailed>,
    mut stream_failed: MessageWriter<StreamFailed>,
    mut crashed: MessageWriter<WorkerCrashed>,
    mut diagnostics: Diagnostics,
    cost: Res<MainThreadCost>,
) {
    let _cost = cost.measure();
    let Some(handle) = handle else { return };
    for msg in handle.try_iter() {
        match msg {
            FromWorker::Loading { stage, progress } => {
                // A reload after a crash stays `Degraded`.
                if !matches!(*status, HeliosStatus::Degraded { .. }) {
                    *status = HeliosStatus::Loading { stage, progress };
                }
            }
            FromWorker::Ready(info) => {
                tracing::info!(
                    "helios model `{}` ready on {} ({}x{}, {} prompts)",
                    info.name,
                    info.provider,
                    info.width,
                    info.height,
                    info.prompts.len()
                );
                // After a crash-restart the status stays Degraded (with the new provider).
                *status = match &*status {
                    HeliosStatus::Degraded { reason, .. } => HeliosStatus::Degraded {
                        provider: info.provider.clone(),
                        reason: reason.clone(),
                    },
                    _ => HeliosStatus::Ready {
                        provider: info.provider.clone(),
                    },
                };
                commands.insert_resource(HeliosModelInfo(info));
            }
            FromWorker::LoadFailed(error) => {
                tracing::error!("helios: no model, screens show the fallback image: {error}");
                *status = HeliosStatus::Failed(error.clone());
                load_failed.write(HeliosLoadFailed { error });
            }
            FromWorker::Chunk {
                stream,
                chunk,
                elapsed,
            } => {
                let Some(entity) = registry.entity(stream) else {
                    continue;
                };
                let Ok((mut s, mut stats)) = screens.get_mut(entity) else {
                    continue;
                };
                if s.id != Some(stream) {
                    continue;
                }
                s.chunks_received = s.chunks_received.max(chunk.index + 1);
                s.frame_size = UVec2::new(chunk.width, chunk.height);
                stats.chunk_latency = elapsed.as_secs_f32();
                stats.chunks += 1;
                stats.last_chunk_index = Some(chunk.index);
                stats.last_chunk_prompt = Some(chunk.prompt);
                s.queue.extend(chunk.frames);
                stats.queue_depth = s.queue.len();
                diagnostics.add_measurement(&CHUNK_LATENCY_MS, || elapsed.as_secs_f64() * 1000.0);
            }
            FromWorker::StreamFailed { stream, error } => {
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
            FromWorker::Crashed { stream, message } => {
                let provider = status.provider().cloned().unwrap_or_else(|| {
                    crate::core::runtime::ProviderReport {
                        active: "none".into(),
                        skipped: Vec::new(),
                    }
                });
                *status = HeliosStatus::Degraded {
                    provider,
                    reason: format!("worker restarted after: {message}"),
                };
                crashed.write(WorkerCrashed { stream, message });
            }
        }
    }
}

/// PostUpdate (after visibility): opens, restarts and updates streams from their screens, plans the
/// next chunks and sends what changed.
#[expect(
    clippy::too_many_arguments,
    reason = "reconciles screens, plan and channel in one pass"
)]
pub(crate) fn dispatch(
    mut screens: Query<(Entity, Ref<HeliosScreen>, &mut HeliosStream)>,
    mut registry: ResMut<HeliosStreams>,
    mut outbox: ResMut<WorkerOutbox>,
    handle: Option<Res<WorkerHandle>>,
    settings: Res<HeliosSettings>,
    info: Option<Res<HeliosModelInfo>>,
    images: Res<Assets<Image>>,
    mut commands: Commands,
    mut last_plan: Local<Vec<ChunkRequest>>,
    mut last_fast_start: Local<Option<bool>>,
    mut diagnostics: Diagnostics,
    cost: Res<MainThreadCost>,
) {
    let _cost = cost.measure();
    // The worker starts with the settings' fast start; later changes are sent.
    if last_fast_start.get_or_insert(settings.fast_start) != &settings.fast_start {
        outbox.push(ToWorker::SetFastStart(settings.fast_start));
        *last_fast_start = Some(settings.fast_start);
    }
    let mut snapshots = Vec::with_capacity(screens.iter().len());
    for (entity, screen, mut stream) in &mut screens {
        let crossfade = screen
            .crossfade_chunks
            .unwrap_or(settings.crossfade_chunks)
            .max(1);
        if stream.id.is_none() || stream.opened_seed != screen.seed || stream.restart_requested {
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
            let stream = &mut *stream;
            stream.id = Some(id);
            stream.restart_requested = false;
            stream.opened_seed = screen.seed;
            stream.sent_prompt = Some((screen.prompt.clone(), crossfade));
            stream.sent_image = None;
            stream.chunks_received = 0;
            stream.failed = None;
            if stream.opened_at.is_none() || stream.showing != Showing::Video {
                stream.opened_at = Some(Instant::now());
                stream.first_frame_pending = true;
            }
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
        let want_image = screen.image.as_ref().map(Handle::id);
        if want_image != stream.sent_image
            && let (Some(id), Some(handle)) = (stream.id, screen.image.as_ref())
        {
            // A reference that is not loaded yet is retried next frame.
            let sent = match reference_pixels(&images, handle) {
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
                    crate::conditioning::request_readback(&mut commands, id, handle.clone());
                    true
                }
                ReferenceImage::Missing => false,
            };
            if sent {
                stream.sent_image = want_image;
            }
        } else if want_image.is_none() {
            stream.sent_image = None;
        }
        if let Some(id) = stream.id {
            snapshots.push(StreamSnapshot {
                stream: id,
                priority: screen.priority,
                on_screen: stream.on_screen,
                size: stream.apparent_size,
                paused: screen.paused,
                failed: stream.failed.is_some(),
                queued_frames: stream.queue.len(),
                chunks_received: stream.chunks_received,
                chunk_limit: stream.chunk_limit,
            });
        }
    }
    let params = ScheduleParams {
        frames_per_chunk: info.as_ref().map_or(33, |i| i.frames_per_chunk),
        chunks_ahead: settings.chunks_ahead,
        max_streams: settings.max_streams,
        pause_hidden: settings.visibility != crate::settings::VisibilitySource::Ignore,
    };
    let plan = scheduler::plan(&snapshots, &params);
    if plan != *last_plan {
        outbox.push(ToWorker::Plan(plan.clone()));
        *last_plan = plan;
    }
    let retried = handle.map_or(0, |h| outbox.flush(&h));
    diagnostics.add_measurement(&SEND_RETRIES, || retried as f64);
    diagnostics.add_measurement(&ACTIVE_STREAMS, || registry.len() as f64);
}
