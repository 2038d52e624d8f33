//! Free-text prompts through the plugin: a screen and a cutscene RON file whose prompts are free text
//! reach the worker, are embedded there and generate; without a text encoder the screen fails with
//! `UnknownPrompt` and the app keeps running.
//!
//! The model is helios-tiny's manifest with one-token prompts of width 16, the tiny random-weight text
//! encoder of `tests/fixtures/text_encoder/tiny` (its reference embeddings as the bank) and the pattern
//! networks: the real worker, sampler and encoder, no denoiser graphs.
#![cfg(feature = "plugin")]

mod common;

use std::path::Path;
use std::time::Duration;

use bevy::prelude::*;
use bevy_helios::backend::{HeliosBackend, HeliosGenerator, PatternNetworks};
use bevy_helios::core::embedding::EmbeddingBank;
use bevy_helios::core::manifest::ModelManifest;
use bevy_helios::core::model::HeliosModel;
use bevy_helios::core::text::TextEncoder;
use bevy_helios::prelude::*;
use common::app::*;

const DEADLINE: Duration = Duration::from_secs(60);
const SNOW: &str = "a snowy forest at night";

/// The pattern model with one-token prompts and the tiny text encoder.
fn free_text_backend() -> HeliosBackend {
    HeliosBackend::custom("free-text", |req, progress| {
        let mut manifest = ModelManifest::load(&req.model_dir)?;
        manifest.embeddings.seq_len = 1;
        manifest.embeddings.dim = 16;
        let dir = common::root().join("tests/fixtures/text_encoder/tiny");
        let bank = EmbeddingBank::load(&dir.join("reference.safetensors"), 1, 16)?;
        progress("text encoder", 0.5);
        let text = TextEncoder::load(
            &dir.join("text_encoder.onnx"),
            &dir.join("tokenizer.json"),
            128,
            Some(1),
        )?;
        let nets = PatternNetworks::new(&manifest);
        let model = HeliosModel::with_networks(manifest, bank, nets).with_text_encoder(text)?;
        Ok(Box::new(model) as Box<dyn HeliosGenerator>)
    })
}

#[test]
fn screens_and_cutscenes_take_free_text() -> Result<(), String> {
    let (mut app, dir) = test_app(HeliosSettings {
        backend: free_text_backend(),
        ..pattern_settings()
    });
    let e = app
        .world_mut()
        .spawn(HeliosScreen::new(PromptWeights::one(SNOW)))
        .id();
    let mut failed = Collected::<StreamFailed>::new();
    update_until(&mut app, DEADLINE, |w| {
        failed.poll(w);
        screen(w, e).1.frames_shown >= 1 || !failed.items.is_empty()
    })?;
    assert!(
        failed.items.is_empty(),
        "a free-text prompt should generate: {:?}",
        failed.items.first().map(|f| f.error.to_string())
    );
    assert_eq!(
        screen(app.world(), e).1.last_chunk_prompt,
        Some(PromptWeights::one(SNOW))
    );
    let info = app.world().resource::<HeliosModelInfo>();
    assert!(info.free_text, "ModelInfo says the model takes free text");

    // A cutscene with a free-text shot and a shot blending it with a bank name.
    dir.insert_asset_text(
        Path::new("cutscenes/free.cutscene.ron"),
        r#"(
            shots: [
                (prompt: {"a lighthouse in a storm, {mood}": 1.0}, duration: Chunks(1)),
                (prompt: {"s1": 0.5, "fog over a quiet lake": 0.5}, duration: Chunks(1), transition: Cut),
            ],
        )"#,
    );
    let handle: Handle<Cutscene> = app
        .world()
        .resource::<AssetServer>()
        .load("cutscenes/free.cutscene.ron");
    app.world_mut()
        .write_message(PlayCutscene::new(handle).with_variable("mood", "dramatic"));
    let mut finished = Collected::<CutsceneFinished>::new();
    update_until(&mut app, DEADLINE, |w| {
        finished.poll(w);
        !finished.items.is_empty()
    })?;
    assert_eq!(
        finished.items[0].outcome,
        CutsceneOutcome::Completed,
        "a cutscene of free-text shots should play to the end"
    );
    Ok(())
}

#[test]
fn free_text_without_an_encoder_fails_the_screen_only() -> Result<(), String> {
    let (mut app, _dir) = test_app(pattern_settings());
    let bad = app
        .world_mut()
        .spawn(HeliosScreen::new(PromptWeights::one(SNOW)))
        .id();
    let good = app
        .world_mut()
        .spawn(HeliosScreen::new(PromptWeights::one("day")))
        .id();
    let mut failed = Collected::<StreamFailed>::new();
    update_until(&mut app, DEADLINE, |w| {
        failed.poll(w);
        !failed.items.is_empty() && screen(w, good).1.frames_shown >= 1
    })?;
    assert_eq!(failed.items[0].entity, bad);
    assert!(
        matches!(&*failed.items[0].error, HeliosError::UnknownPrompt { name, .. } if name == SNOW),
        "the pattern backend has no text encoder: {}",
        failed.items[0].error
    );
    Ok(())
}
