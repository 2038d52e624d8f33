//! Cutscenes: RON files parse, shots play in order with their prompts, `CutsceneFinished` is written
//! and triggered; broken files and missing variables are clear errors and the app keeps running.
#![cfg(feature = "plugin")]

mod common;

use std::path::Path;
use std::time::Duration;

use bevy::prelude::*;
use bevy_helios::cutscene::{CutscenePlayer, Transition};
use bevy_helios::prelude::*;
use common::app::*;

const DEADLINE: Duration = Duration::from_secs(60);

const THREE_SHOTS: &str = r#"(
    name: Some("test"),
    seed: 4,
    shots: [
        (name: Some("intro"), prompt: {"{choice}_intro": 1.0}, duration: Chunks(1)),
        (name: Some("storm"), prompt: {"storm": 1.0}, duration: Chunks(1), transition: Crossfade(1)),
        (name: Some("title"), prompt: {"title": 1.0}, duration: Chunks(1), transition: Cut, seed: Some(5)),
    ],
)"#;

#[derive(Resource, Default)]
struct FinishedOn(Vec<(Entity, CutsceneOutcome)>);

#[test]
fn shipped_cutscenes_parse() -> Result<(), Box<dyn std::error::Error>> {
    let dir = common::root().join("assets/cutscenes");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(".cutscene.ron") {
            let c = Cutscene::from_ron(&std::fs::read(&path)?)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            assert!(!c.shots.is_empty());
            n += 1;
        }
    }
    assert!(
        n >= 2,
        "assets/cutscenes has at least two cutscenes, found {n}"
    );
    let intro = Cutscene::from_ron(&std::fs::read(dir.join("intro.cutscene.ron"))?)?;
    assert!(
        intro.shots[0].prompt.keys().any(|k| k.contains("{choice}")),
        "the intro's first shot depends on the `choice` variable"
    );
    Ok(())
}

#[test]
fn shots_play_in_order_and_the_end_is_announced() -> Result<(), String> {
    let (mut app, dir) = test_app(pattern_settings());
    dir.insert_asset_text(Path::new("cutscenes/test.cutscene.ron"), THREE_SHOTS);
    // A billboard that must wait while the cutscene needs the worker.
    let billboard = app
        .world_mut()
        .spawn(HeliosScreen::new(PromptWeights::one("city")))
        .id();
    let zone = app.world_mut().spawn_empty().id();
    app.init_resource::<FinishedOn>();
    app.world_mut().entity_mut(zone).observe(
        |done: On<CutsceneFinished>, mut log: ResMut<FinishedOn>| {
            log.0.push((done.entity, done.outcome.clone()));
        },
    );
    let handle: Handle<Cutscene> = app
        .world()
        .resource::<AssetServer>()
        .load("cutscenes/test.cutscene.ron");
    app.world_mut().write_message(
        PlayCutscene::new(handle)
            .with_variable("choice", "villain")
            .with_target(zone),
    );

    let mut shots = Collected::<CutsceneShotStarted>::new();
    let mut finished = Collected::<CutsceneFinished>::new();
    let mut chunk_prompts: Vec<(u64, PromptWeights)> = Vec::new();
    update_until(&mut app, DEADLINE, |w| {
        shots.poll(w);
        finished.poll(w);
        let mut q = w
            .try_query::<(&CutscenePlayer, &HeliosStreamStats)>()
            .expect("registered");
        for (_, stats) in q.iter(w) {
            // Shot boundaries hold generation, so chunks arrive one update at a time.
            if let (Some(i), Some(p)) = (stats.last_chunk_index, &stats.last_chunk_prompt)
                && stats.chunks as usize > chunk_prompts.len()
            {
                chunk_prompts.push((i, p.clone()));
            }
        }
        !finished.items.is_empty()
    })?;

    let order: Vec<(usize, PromptWeights)> = shots
        .items
        .iter()
        .map(|s| (s.shot, s.prompt.clone()))
        .collect();
    assert_eq!(
        order,
        vec![
            (0, PromptWeights::one("villain_intro")),
            (1, PromptWeights::one("storm")),
            (2, PromptWeights::one("title")),
        ],
        "each shot starts once, in order, with `{{choice}}` filled in"
    );
    // A finished crossfade reports the previous prompt with weight 0: compare the positive weights.
    let positive = |p: &PromptWeights| {
        PromptWeights(
            p.0.iter()
                .filter(|(_, w)| **w > 0.0)
                .map(|(k, w)| (k.clone(), *w))
                .collect(),
        )
    };
    let prompts: Vec<PromptWeights> = chunk_prompts.iter().map(|(_, p)| positive(p)).collect();
    assert_eq!(
        prompts,
        vec![
            PromptWeights::one("villain_intro"),
            PromptWeights::one("storm"),
            PromptWeights::one("title")
        ],
        "one chunk per shot, generated with that shot's prompt: {chunk_prompts:?}"
    );
    assert_eq!(
        chunk_prompts[2].0, 0,
        "the `Cut` shot starts a fresh stream at chunk 0"
    );
    assert_eq!(finished.items.len(), 1);
    assert_eq!(finished.items[0].outcome, CutsceneOutcome::Completed);
    assert_eq!(
        finished.items[0].entity, zone,
        "the message names the target entity"
    );
    assert_eq!(
        app.world().resource::<FinishedOn>().0,
        vec![(zone, CutsceneOutcome::Completed)],
        "the entity event reached the target's observer"
    );
    app.update();
    let players = app
        .world_mut()
        .query::<&CutscenePlayer>()
        .iter(app.world())
        .count();
    assert_eq!(players, 0, "the fullscreen player is gone");
    // The billboard resumes once the cutscene is over.
    let before = screen(app.world(), billboard).1.chunks;
    update_until(&mut app, DEADLINE, |w| {
        screen(w, billboard).1.chunks > before
    })?;
    Ok(())
}

#[test]
fn a_broken_cutscene_is_a_clear_error_and_the_app_keeps_running() -> Result<(), String> {
    let (mut app, dir) = test_app(pattern_settings());
    let broken = THREE_SHOTS.replace("duration: Chunks(1)),", "duration: Chunks(1), colour: 2),");
    dir.insert_asset_text(Path::new("cutscenes/broken.cutscene.ron"), &broken);
    let handle: Handle<Cutscene> = app
        .world()
        .resource::<AssetServer>()
        .load("cutscenes/broken.cutscene.ron");
    app.world_mut().write_message(PlayCutscene::new(handle));
    let mut failed = Collected::<CutsceneFailed>::new();
    let mut finished = Collected::<CutsceneFinished>::new();
    update_until(&mut app, DEADLINE, |w| {
        failed.poll(w);
        finished.poll(w);
        !failed.items.is_empty() && !finished.items.is_empty()
    })?;
    let reason = &failed.items[0].reason;
    assert!(
        reason.contains("colour"),
        "the error names the unknown field: {reason}"
    );
    assert!(
        reason.contains("RON") || reason.contains("ron"),
        "the error says it is a RON problem: {reason}"
    );
    assert!(matches!(
        finished.items[0].outcome,
        CutsceneOutcome::Failed(_)
    ));

    // Out-of-range values are typed `Invalid { shot, .. }` errors.
    let invalid = THREE_SHOTS.replace("Crossfade(1)", "Crossfade(0)");
    match Cutscene::from_ron(invalid.as_bytes()) {
        Err(bevy_helios::cutscene::CutsceneLoaderError::Invalid {
            shot: 1, reason, ..
        }) => {
            assert!(reason.contains("crossfade"), "{reason}")
        }
        other => return Err(format!("expected Invalid {{ shot: 1 }}, got {other:?}")),
    }

    // The app keeps updating and a screen still plays.
    let e = app
        .world_mut()
        .spawn(HeliosScreen::new(PromptWeights::one("day")))
        .id();
    update_until(&mut app, DEADLINE, |w| screen(w, e).1.frames_shown >= 2)?;
    Ok(())
}

#[test]
fn a_cutscene_that_cannot_load_ends_with_its_cause_in_bounded_time() -> Result<(), String> {
    let (mut app, _dir) = test_app(pattern_settings());
    let missing: Handle<Cutscene> = app
        .world()
        .resource::<AssetServer>()
        .load("cutscenes/missing.cutscene.ron");
    let never_loaded = Handle::<Cutscene>::default();
    app.world_mut()
        .write_message(PlayCutscene::new(missing.clone()));
    app.world_mut()
        .write_message(PlayCutscene::new(never_loaded.clone()));
    let start = std::time::Instant::now();
    let mut finished = Collected::<CutsceneFinished>::new();
    update_until(&mut app, DEADLINE, |w| {
        finished.poll(w);
        finished.items.len() >= 2
    })?;
    // A handle nothing loads fails after a one-second grace, not never.
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "both requests ended within 10 s, took {:?}",
        start.elapsed()
    );
    let reason_of = |id: AssetId<Cutscene>| {
        finished
            .items
            .iter()
            .find(|f| f.cutscene == id)
            .map(|f| f.outcome.clone())
    };
    match reason_of(missing.id()) {
        Some(CutsceneOutcome::Failed(reason)) => assert!(
            reason.contains("missing.cutscene.ron") && reason.contains("not found"),
            "names the file and the cause: {reason}"
        ),
        other => return Err(format!("missing file: expected a failure, got {other:?}")),
    }
    match reason_of(never_loaded.id()) {
        Some(CutsceneOutcome::Failed(reason)) => assert!(
            reason.contains("nothing is loading it"),
            "says no load is under way: {reason}"
        ),
        other => return Err(format!("default handle: expected a failure, got {other:?}")),
    }
    Ok(())
}

#[test]
fn a_missing_variable_fails_the_cutscene() -> Result<(), String> {
    let (mut app, dir) = test_app(pattern_settings());
    dir.insert_asset_text(Path::new("cutscenes/test.cutscene.ron"), THREE_SHOTS);
    let handle: Handle<Cutscene> = app
        .world()
        .resource::<AssetServer>()
        .load("cutscenes/test.cutscene.ron");
    app.world_mut().write_message(PlayCutscene::new(handle));
    let mut finished = Collected::<CutsceneFinished>::new();
    update_until(&mut app, DEADLINE, |w| {
        finished.poll(w);
        !finished.items.is_empty()
    })?;
    match &finished.items[0].outcome {
        CutsceneOutcome::Failed(reason) => {
            assert!(reason.contains("choice"), "names the variable: {reason}")
        }
        other => return Err(format!("expected a failure, got {other:?}")),
    }
    Ok(())
}

#[test]
fn skip_ends_a_cutscene_and_hot_reload_keeps_it_playing() -> Result<(), String> {
    let (mut app, dir) = test_app(pattern_settings());
    let long = THREE_SHOTS.replace("Chunks(1)", "Chunks(50)");
    dir.insert_asset_text(Path::new("cutscenes/long.cutscene.ron"), &long);
    let handle: Handle<Cutscene> = app
        .world()
        .resource::<AssetServer>()
        .load("cutscenes/long.cutscene.ron");
    app.world_mut()
        .write_message(PlayCutscene::new(handle.clone()).with_variable("choice", "hero"));
    let mut shots = Collected::<CutsceneShotStarted>::new();
    update_until(&mut app, DEADLINE, |w| {
        shots.poll(w);
        !shots.items.is_empty()
    })?;

    // Hot reload: edit the asset (as the file watcher would); the player re-resolves its shots.
    let mut failed = Collected::<CutsceneFailed>::new();
    {
        let mut cutscenes = app.world_mut().resource_mut::<Assets<Cutscene>>();
        let mut c = cutscenes.get_mut(&handle).ok_or("cutscene loaded")?;
        c.shots[1].prompt = [("ocean".to_string(), 1.0)].into();
        c.shots[1].transition = Transition::Crossfade(2);
    }
    for _ in 0..3 {
        app.update();
        failed.poll(app.world());
    }
    assert!(
        failed.items.is_empty(),
        "a valid edit reloads without errors: {:?}",
        failed.items
    );
    let mut q = app.world_mut().query::<&CutscenePlayer>();
    assert_eq!(
        q.iter(app.world()).count(),
        1,
        "still playing after the reload"
    );

    app.world_mut().write_message(SkipCutscene);
    let mut finished = Collected::<CutsceneFinished>::new();
    update_until(&mut app, DEADLINE, |w| {
        finished.poll(w);
        !finished.items.is_empty()
    })?;
    assert_eq!(finished.items[0].outcome, CutsceneOutcome::Skipped);
    Ok(())
}
