//! Failures stay local: a missing model, a panicking worker and an unknown prompt each give a clear
//! error (status, message, fallback image) while the app keeps updating.
#![cfg(feature = "plugin")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bevy::prelude::*;
use bevy_helios::backend::{HeliosBackend, HeliosGenerator, ModelInfo};
use bevy_helios::core::stream::{Chunk, GenerationState, StreamConfig};
use bevy_helios::prelude::*;
use bevy_helios::screen::{Showing, fallback_pixels};
use bevy_helios::status::WorkerCrashed;
use common::app::*;

const DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn a_missing_model_fails_cleanly_and_screens_show_the_fallback() -> Result<(), String> {
    // The real ONNX backend: the manifest is checked before ONNX Runtime is touched.
    let settings = HeliosSettings {
        model_dir: "/nonexistent/helios-model".into(),
        ..default()
    };
    let (mut app, _dir) = test_app(settings);
    let e = app.world_mut().spawn(HeliosScreen::default()).id();
    let mut failed = Collected::<HeliosLoadFailed>::new();
    update_until(&mut app, DEADLINE, |w| {
        failed.poll(w);
        !failed.items.is_empty()
    })?;
    let error = failed.items[0].error.to_string();
    assert!(
        error.contains("/nonexistent/helios-model"),
        "the error names the path: {error}"
    );
    assert!(
        matches!(*failed.items[0].error, HeliosError::ModelMissing { .. }),
        "typed error: {error}"
    );
    assert!(
        app.world().resource::<HeliosStatus>().error().is_some(),
        "status is Failed"
    );

    for _ in 0..30 {
        app.update();
    }
    let (stream, _) = screen(app.world(), e);
    assert_eq!(stream.showing(), Showing::Fallback);
    assert_eq!(
        screen_pixels(app.world(), e),
        fallback_pixels(UVec2::splat(64)),
        "the fallback image is shown"
    );
    // Screens spawned after the failure get it too.
    let late = app.world_mut().spawn(HeliosScreen::default()).id();
    app.update();
    assert_eq!(screen(app.world(), late).0.showing(), Showing::Fallback);
    assert_eq!(failed.items.len(), 1, "the failure is reported once");
    Ok(())
}

/// The pattern model, panicking once on its second chunk.
struct Flaky {
    inner: Box<dyn HeliosGenerator>,
    armed: Arc<AtomicBool>,
}

impl HeliosGenerator for Flaky {
    fn info(&self) -> ModelInfo {
        self.inner.info()
    }
    fn new_stream(&mut self, config: &StreamConfig) -> Result<GenerationState, HeliosError> {
        self.inner.new_stream(config)
    }
    fn check_prompt(&self, weights: &PromptWeights) -> Result<(), HeliosError> {
        self.inner.check_prompt(weights)
    }
    fn next_chunk(&mut self, state: &mut GenerationState) -> Result<Chunk, HeliosError> {
        if state.chunk_index == 1 && self.armed.swap(false, Ordering::SeqCst) {
            panic!("simulated driver crash");
        }
        self.inner.next_chunk(state)
    }
    fn set_fast_start(&mut self, fast_start: bool) {
        self.inner.set_fast_start(fast_start);
    }
}

#[test]
fn a_worker_panic_restarts_from_the_saved_stream_state() -> Result<(), String> {
    let armed = Arc::new(AtomicBool::new(true));
    let loads = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (armed2, loads2) = (armed.clone(), loads.clone());
    let backend = HeliosBackend::custom("flaky", move |req, progress| {
        loads2.fetch_add(1, Ordering::SeqCst);
        let inner = HeliosBackend::pattern().load(req, progress)?;
        Ok(Box::new(Flaky {
            inner,
            armed: armed2.clone(),
        }))
    });
    let (mut app, _dir) = test_app(HeliosSettings {
        backend,
        ..pattern_settings()
    });
    let e = app
        .world_mut()
        .spawn(HeliosScreen::new(PromptWeights::one("fire")))
        .id();
    let mut crashed = Collected::<WorkerCrashed>::new();
    let mut indices = Vec::new();
    update_until(&mut app, DEADLINE, |w| {
        crashed.poll(w);
        let stats = screen(w, e).1;
        if stats.chunks as usize > indices.len() {
            indices.push(stats.last_chunk_index);
        }
        stats.chunks >= 3
    })?;
    assert!(!armed.load(Ordering::SeqCst), "the panic happened");
    assert_eq!(crashed.items.len(), 1, "one WorkerCrashed message");
    assert!(
        crashed.items[0].message.contains("simulated driver crash"),
        "{:?}",
        crashed.items[0]
    );
    assert_eq!(
        loads.load(Ordering::SeqCst),
        2,
        "the model was loaded again after the panic"
    );
    assert!(
        matches!(
            app.world().resource::<HeliosStatus>(),
            HeliosStatus::Degraded { .. }
        ),
        "status says the worker restarted"
    );
    assert_eq!(
        indices.iter().take(3).copied().collect::<Vec<_>>(),
        vec![Some(0), Some(1), Some(2)],
        "the stream went on from its saved state: chunk 1 was generated again, nothing skipped"
    );
    Ok(())
}

#[test]
fn an_unknown_prompt_fails_only_its_stream() -> Result<(), String> {
    let (mut app, _dir) = test_app(pattern_settings());
    let bad = app
        .world_mut()
        .spawn(HeliosScreen::new(PromptWeights::one("no_such_prompt")))
        .id();
    let good = app
        .world_mut()
        .spawn(HeliosScreen::new(PromptWeights::one("calm")))
        .id();
    let mut failed = Collected::<StreamFailed>::new();
    update_until(&mut app, DEADLINE, |w| {
        failed.poll(w);
        !failed.items.is_empty() && screen(w, good).1.frames_shown >= 2
    })?;
    assert_eq!(failed.items[0].entity, bad);
    assert!(
        matches!(&*failed.items[0].error, HeliosError::UnknownPrompt { name, .. } if name == "no_such_prompt"),
        "{:?}",
        failed.items[0].error
    );
    app.update();
    assert_eq!(
        screen(app.world(), bad).0.showing(),
        Showing::Fallback,
        "the failed screen shows the fallback"
    );
    assert!(
        app.world().resource::<HeliosStatus>().is_ready(),
        "the model itself is fine"
    );

    // Fixing the prompt recovers the screen.
    app.world_mut()
        .get_mut::<HeliosScreen>(bad)
        .ok_or("screen")?
        .prompt = PromptWeights::one("excited");
    update_until(&mut app, DEADLINE, |w| {
        screen(w, bad).0.showing() == Showing::Video
    })?;
    Ok(())
}
