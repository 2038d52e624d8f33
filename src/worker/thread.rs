//! The `helios-worker` thread: loads the model, owns it and every stream's [`GenerationState`], and
//! generates one chunk at a time for the most urgent entry of the plan. It may block (on its inbox
//! when idle, on the bounded reply channel as back-pressure); the app never does.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::protocol::{ChunkRequest, FromWorker, ToWorker};
use crate::backend::{HeliosBackend, HeliosGenerator, LoadRequest};
use crate::core::stream::{GenerationState, StreamConfig, StreamId};
use crate::error::HeliosError;

/// What the thread needs to start (and restart) the model.
pub(crate) struct WorkerConfig {
    pub backend: HeliosBackend,
    pub request: LoadRequest,
    pub max_restarts: u32,
}

struct WorkerStream {
    /// The last committed state: a failed or panicking job never touches it.
    state: GenerationState,
    /// Set after an error; cleared by a new prompt.
    failed: bool,
}

struct Worker {
    config: WorkerConfig,
    rx: Receiver<ToWorker>,
    tx: Sender<FromWorker>,
    stop: Arc<AtomicBool>,
    model: Option<Box<dyn HeliosGenerator>>,
    streams: BTreeMap<StreamId, WorkerStream>,
    /// Opens that failed (e.g. an unknown prompt): a new prompt retries them.
    failed_opens: BTreeMap<StreamId, StreamConfig>,
    plan: Vec<ChunkRequest>,
    fast_start: bool,
    restarts: u32,
}

/// The thread body.
pub(crate) fn run(
    config: WorkerConfig,
    rx: Receiver<ToWorker>,
    tx: Sender<FromWorker>,
    stop: Arc<AtomicBool>,
) {
    let fast_start = config.request.fast_start;
    let mut worker = Worker {
        config,
        rx,
        tx,
        stop,
        model: None,
        streams: BTreeMap::new(),
        failed_opens: BTreeMap::new(),
        plan: Vec::new(),
        fast_start,
        restarts: 0,
    };
    if worker.load().is_err() {
        return;
    }
    worker.serve();
    tracing::debug!("helios-worker stopped");
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The reply channel closed: the app is gone.
struct Disconnected;

impl Worker {
    fn send(&self, msg: FromWorker) -> Result<(), Disconnected> {
        self.tx.send(msg).map_err(|_| Disconnected)
    }

    /// Loads (or reloads) the model; on failure reports `LoadFailed` and leaves `model` empty.
    fn load(&mut self) -> Result<(), Disconnected> {
        let tx = self.tx.clone();
        let mut progress = |stage: &str, progress: f32| {
            let _ = tx.send(FromWorker::Loading {
                stage: stage.to_string(),
                progress,
            });
        };
        let backend = self.config.backend.clone();
        let request = self.config.request.clone();
        let _span = tracing::info_span!("helios_load", backend = backend.name()).entered();
        let result = catch_unwind(AssertUnwindSafe(|| backend.load(&request, &mut progress)));
        let result = match result {
            Ok(r) => r,
            Err(panic) => Err(HeliosError::internal(format!(
                "loading the model panicked: {}",
                panic_message(panic.as_ref())
            ))),
        };
        match result {
            Ok(mut model) => {
                model.set_fast_start(self.fast_start);
                let info = model.info();
                self.model = Some(model);
                self.send(FromWorker::Ready(info))
            }
            Err(e) => {
                self.model = None;
                self.send(FromWorker::LoadFailed(Arc::new(e)))
            }
        }
    }

    /// First plan entry that still needs a chunk.
    fn next_job(&self) -> Option<StreamId> {
        self.model.as_ref()?;
        self.plan.iter().find_map(|req| {
            let s = self.streams.get(&req.stream)?;
            (!s.failed && s.state.chunk_index < req.until).then_some(req.stream)
        })
    }

    fn serve(&mut self) {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let has_work = self.next_job().is_some();
            let msg = if has_work {
                match self.rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return,
                }
            } else {
                match self.rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => return,
                }
            };
            let step = match msg {
                Some(ToWorker::Shutdown) => return,
                Some(m) => self.handle(m),
                None => match self.next_job() {
                    Some(stream) => self.generate(stream),
                    None => Ok(()),
                },
            };
            if step.is_err() {
                return;
            }
        }
    }

    /// Runs `job` on the model under `catch_unwind`; a panic reloads the model.
    fn guarded<T>(
        &mut self,
        stream: Option<StreamId>,
        job: impl FnOnce(&mut dyn HeliosGenerator) -> T,
    ) -> Result<Option<T>, Disconnected> {
        let Some(model) = self.model.as_deref_mut() else {
            return Ok(None);
        };
        match catch_unwind(AssertUnwindSafe(|| job(model))) {
            Ok(v) => Ok(Some(v)),
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                tracing::error!(
                    "helios-worker: job for {stream:?} panicked: {message}; restarting"
                );
                self.send(FromWorker::Crashed {
                    stream,
                    message: message.clone(),
                })?;
                self.model = None;
                self.restarts += 1;
                if self.restarts > self.config.max_restarts {
                    let err = HeliosError::internal(format!(
                        "the worker crashed {} times (last: {message}); giving up",
                        self.restarts
                    ));
                    self.send(FromWorker::LoadFailed(Arc::new(err)))?;
                } else {
                    // Stream states live here, not in the model, so they survive the reload.
                    self.load()?;
                }
                Ok(None)
            }
        }
    }

    fn fail(&mut self, stream: StreamId, error: HeliosError) -> Result<(), Disconnected> {
        tracing::warn!("helios stream {}: {error}", stream.0);
        if let Some(s) = self.streams.get_mut(&stream) {
            s.failed = true;
        }
        self.send(FromWorker::StreamFailed {
            stream,
            error: Arc::new(error),
        })
    }

    fn handle(&mut self, msg: ToWorker) -> Result<(), Disconnected> {
        match msg {
            ToWorker::Open { stream, config } => self.open(stream, config)?,
            ToWorker::Close { stream } => {
                self.streams.remove(&stream);
                self.failed_opens.remove(&stream);
            }
            ToWorker::SetPrompt {
                stream,
                weights,
                crossfade_chunks,
            } => {
                if let Some(mut config) = self.failed_opens.remove(&stream) {
                    config.prompt = weights;
                    config.crossfade_chunks = crossfade_chunks;
                    return self.open(stream, config);
                }
                if !self.streams.contains_key(&stream) {
                    return Ok(());
                }
                match self.guarded(Some(stream), |m| m.check_prompt(&weights))? {
                    Some(Ok(())) => {
                        if let Some(s) = self.streams.get_mut(&stream) {
                            s.state.prompt.chunks = crossfade_chunks.max(1);
                            s.state.set_prompt(weights);
                            s.failed = false;
                        }
                    }
                    Some(Err(e)) => self.fail(stream, e)?,
                    None => {}
                }
            }
            ToWorker::ConditionImage {
                stream,
                rgba,
                width,
                height,
            } => {
                let Some(s) = self.streams.get(&stream) else {
                    return Ok(());
                };
                let mut state = s.state.clone();
                let result = self.guarded(Some(stream), |m| {
                    m.condition_on_image(&mut state, &rgba, width, height)
                        .map(|()| state)
                })?;
                match result {
                    Some(Ok(state)) => {
                        if let Some(s) = self.streams.get_mut(&stream) {
                            s.state = state;
                        }
                    }
                    Some(Err(e)) => {
                        // The stream goes on without the image.
                        tracing::warn!(
                            "helios stream {}: image conditioning failed: {e}",
                            stream.0
                        );
                        self.send(FromWorker::StreamFailed {
                            stream,
                            error: Arc::new(e),
                        })?;
                    }
                    None => {}
                }
            }
            ToWorker::Plan(plan) => self.plan = plan,
            ToWorker::SetFastStart(on) => {
                self.fast_start = on;
                if let Some(m) = self.model.as_deref_mut() {
                    m.set_fast_start(on);
                }
            }
            ToWorker::Shutdown => {}
        }
        Ok(())
    }

    fn open(&mut self, stream: StreamId, config: StreamConfig) -> Result<(), Disconnected> {
        match self.guarded(Some(stream), |m| m.new_stream(&config))? {
            Some(Ok(state)) => {
                self.streams.insert(
                    stream,
                    WorkerStream {
                        state,
                        failed: false,
                    },
                );
                Ok(())
            }
            Some(Err(e)) => {
                tracing::warn!("helios stream {}: cannot open: {e}", stream.0);
                self.failed_opens.insert(stream, config);
                self.send(FromWorker::StreamFailed {
                    stream,
                    error: Arc::new(e),
                })
            }
            None => Ok(()),
        }
    }

    fn generate(&mut self, stream: StreamId) -> Result<(), Disconnected> {
        let Some(s) = self.streams.get(&stream) else {
            return Ok(());
        };
        let mut state = s.state.clone();
        let started = Instant::now();
        let _span =
            tracing::debug_span!("helios_job", stream = stream.0, chunk = state.chunk_index)
                .entered();
        let result = self.guarded(Some(stream), |m| {
            m.next_chunk(&mut state).map(|chunk| (chunk, state))
        })?;
        match result {
            Some(Ok((chunk, state))) => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.state = state;
                }
                self.send(FromWorker::Chunk {
                    stream,
                    chunk,
                    elapsed: started.elapsed(),
                })
            }
            Some(Err(e)) => self.fail(stream, e),
            None => Ok(()),
        }
    }
}
