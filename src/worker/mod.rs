//! The app side of the `helios-worker` thread: [`WorkerHandle`] (the channels and the thread),
//! [`WorkerOutbox`] (messages waiting for room in the channel), and the systems that start the
//! worker, take its replies (`receive`) and plan and send its work (`dispatch`). The worker knows
//! streams only by id: the screens turn their edits into requests ([`WorkerOutbox`]) and their queues
//! into [`StreamSnapshot`]s (`StreamDemand`), and take the chunks that arrive (`Arrivals`).
//! Systems only `try_send` and `try_iter`; see the `thread` module for the side that blocks.

pub mod protocol;
pub mod scheduler;
pub(crate) mod thread;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bevy::diagnostic::Diagnostics;
use bevy::prelude::*;
use crossbeam_channel::{Receiver, Sender, TrySendError};

pub use protocol::{ChunkRequest, FromWorker, ToWorker};
pub use scheduler::{Schedule, ScheduleParams, StreamRate, StreamSnapshot};

use crate::core::stream::{Chunk, StreamId};
use crate::diagnostics::{
    ACTIVE_STREAMS, CHUNK_LATENCY_MS, FULL_RATE_STREAMS, GENERATED_FPS, MainThreadCost,
    SEND_RETRIES,
};
use crate::error::HeliosError;
use crate::settings::HeliosSettings;
use crate::status::{
    GenerationCapacity, HeliosLoadFailed, HeliosModelInfo, HeliosStatus, WorkerCrashed,
};

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
            let error = Arc::new(HeliosError::internal(format!(
                "could not start the helios-worker thread: {e}"
            )));
            tracing::error!("{error}");
            *status = HeliosStatus::Failed(error.clone());
            failed.write(HeliosLoadFailed { error });
        }
    }
}

/// A chunk for a stream, waiting for its screen (taken in [`HeliosSystems::Receive`](crate::plugin::HeliosSystems)).
#[derive(Debug)]
pub(crate) struct ArrivedChunk {
    pub stream: StreamId,
    pub chunk: Chunk,
    pub elapsed: Duration,
}

/// Replies about streams, moved out of the channel by [`receive`] for the screens to take.
#[derive(Resource, Debug, Default)]
pub(crate) struct Arrivals {
    pub chunks: Vec<ArrivedChunk>,
    pub failures: Vec<(StreamId, Arc<HeliosError>)>,
}

/// What the screens want generated, written by the screens each frame before [`dispatch`].
#[derive(Resource, Debug, Default)]
pub(crate) struct StreamDemand(pub Vec<StreamSnapshot>);

/// How fast the generator is and how it is shared: the measured rate and the current [`Schedule`]
/// (each active stream's share and playout rate).
#[derive(Resource, Debug, Default)]
pub struct GeneratorLoad {
    /// Moving average of the worker's seconds per generated frame.
    seconds_per_frame: Option<f64>,
    schedule: Schedule,
}

impl GeneratorLoad {
    /// Weight of the newest chunk in the moving average.
    const SMOOTHING: f64 = 0.25;

    /// Frames the generator makes per second of its own time, all streams together (None before the
    /// first chunk).
    pub fn generated_fps(&self) -> Option<f32> {
        self.seconds_per_frame
            .filter(|s| *s > 0.0)
            .map(|s| (1.0 / s) as f32)
    }

    /// The current plan: requests, shares and playout rates.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn record(&mut self, frames: usize, elapsed: Duration) {
        if frames == 0 {
            return;
        }
        let spf = elapsed.as_secs_f64() / frames as f64;
        self.seconds_per_frame = Some(match self.seconds_per_frame {
            Some(old) => old + Self::SMOOTHING * (spf - old),
            None => spf,
        });
    }
}

/// PreUpdate: takes the worker's replies: load progress and failures into [`HeliosStatus`] and
/// messages, stream replies into [`Arrivals`], chunk times into [`GeneratorLoad`].
#[expect(
    clippy::too_many_arguments,
    reason = "one system routes every kind of reply"
)]
pub(crate) fn receive(
    handle: Option<Res<WorkerHandle>>,
    mut status: ResMut<HeliosStatus>,
    mut arrivals: ResMut<Arrivals>,
    mut load: ResMut<GeneratorLoad>,
    mut commands: Commands,
    mut load_failed: MessageWriter<HeliosLoadFailed>,
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
                        capacity: None,
                    },
                    _ => HeliosStatus::Ready {
                        provider: info.provider.clone(),
                        capacity: None,
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
                load.record(chunk.frames.len(), elapsed);
                diagnostics.add_measurement(&CHUNK_LATENCY_MS, || elapsed.as_secs_f64() * 1000.0);
                arrivals.chunks.push(ArrivedChunk {
                    stream,
                    chunk,
                    elapsed,
                });
            }
            FromWorker::StreamFailed { stream, error } => {
                arrivals.failures.push((stream, error));
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
                    capacity: None,
                };
                crashed.write(WorkerCrashed { stream, message });
            }
        }
    }
}

/// PostUpdate, after the screens' sync: plans the next chunks from [`StreamDemand`] and the measured
/// generator rate, sends the plan when it changed, and flushes the outbox.
#[expect(
    clippy::too_many_arguments,
    reason = "plan inputs, outputs, channel and metrics"
)]
pub(crate) fn dispatch(
    demand: Res<StreamDemand>,
    mut load: ResMut<GeneratorLoad>,
    mut outbox: ResMut<WorkerOutbox>,
    mut status: ResMut<HeliosStatus>,
    handle: Option<Res<WorkerHandle>>,
    settings: Res<HeliosSettings>,
    info: Option<Res<HeliosModelInfo>>,
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
    let params = ScheduleParams {
        frames_per_chunk: info.as_ref().map_or(33, |i| i.frames_per_chunk),
        chunks_ahead: settings.chunks_ahead,
        max_streams: settings.max_streams,
        pause_hidden: settings.visibility != crate::settings::VisibilitySource::Ignore,
        playout_fps: settings.playout_fps,
        min_playout_fps: settings.min_playout_fps,
        generated_fps: load.generated_fps(),
    };
    let schedule = scheduler::plan(&demand.0, &params);
    if schedule.requests != load.schedule.requests {
        outbox.push(ToWorker::Plan(schedule.requests.clone()));
    }
    if let (Some(generated), Some(full_rate)) = (params.generated_fps, schedule.full_rate_streams) {
        let capacity = GenerationCapacity {
            generated_fps: generated,
            full_rate_streams: full_rate,
        };
        // Status changes (and change detection) only when the numbers move visibly.
        if status
            .capacity()
            .is_none_or(|old| !old.roughly_equals(&capacity))
        {
            status.set_capacity(capacity);
        }
        diagnostics.add_measurement(&GENERATED_FPS, || f64::from(generated));
        diagnostics.add_measurement(&FULL_RATE_STREAMS, || f64::from(full_rate));
    }
    load.schedule = schedule;
    let retried = handle.map_or(0, |h| outbox.flush(&h));
    diagnostics.add_measurement(&SEND_RETRIES, || retried as f64);
    diagnostics.add_measurement(&ACTIVE_STREAMS, || demand.0.len() as f64);
}
