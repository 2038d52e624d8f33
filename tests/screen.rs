//! Screens end to end with the pattern backend (real sampler, synthetic networks, real worker thread):
//! frames reach the image, conditioning changes reach the next chunk, off-screen screens pause.
#![cfg(feature = "plugin")]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bevy::camera::visibility::ViewVisibility;
use bevy::prelude::*;
use bevy_helios::prelude::*;
use bevy_helios::screen::{Showing, StreamState};
use bevy_helios::settings::VisibilitySource;
use common::app::*;

const DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn frames_reach_the_screen_image() -> Result<(), String> {
    let (mut app, _dir) = test_app(pattern_settings());
    let e = app
        .world_mut()
        .spawn(HeliosScreen::new(PromptWeights::one("day")).with_seed(1))
        .id();
    let placeholder = {
        app.update();
        screen_pixels(app.world(), e)
    };
    assert_eq!(
        placeholder.len(),
        64 * 64 * 4,
        "the screen gets a 64x64 RGBA image at once"
    );

    update_until(&mut app, DEADLINE, |w| screen(w, e).1.frames_shown >= 1)?;
    let first = screen_pixels(app.world(), e);
    let (stream, stats) = screen(app.world(), e);
    assert_eq!(
        stream.showing(),
        Showing::Video,
        "a generated frame is on the image"
    );
    assert_ne!(first, placeholder, "the image changed from the placeholder");
    assert!(
        first.chunks_exact(4).any(|p| p[..3] != first[..3]),
        "the frame is not a flat colour"
    );
    assert!(
        stats.first_frame_latency.is_some(),
        "first-frame latency is measured"
    );
    let status = app.world().resource::<HeliosStatus>();
    assert!(
        status
            .provider()
            .is_some_and(|p| p.active.starts_with("pattern")),
        "status is Ready on the pattern backend, got {status:?}"
    );

    update_until(&mut app, DEADLINE, |w| screen(w, e).1.frames_shown >= 5)?;
    assert_ne!(
        screen_pixels(app.world(), e),
        first,
        "later frames differ: the video moves"
    );
    let (stream, stats) = screen(app.world(), e);
    assert!(stats.chunks >= 1 && stream.chunks_received() >= 1);
    assert_eq!(stats.last_chunk_prompt, Some(PromptWeights::one("day")));
    Ok(())
}

#[derive(Resource)]
struct Weather(&'static str);

#[derive(Component)]
struct Window;

#[test]
fn a_conditioning_change_shows_in_the_next_chunk() -> Result<(), String> {
    // One chunk ahead: the worker never holds more than the chunk in flight.
    let (mut app, _dir) = test_app(HeliosSettings {
        chunks_ahead: 1,
        ..pattern_settings()
    });
    app.insert_resource(Weather("day"))
        .add_helios_conditioning::<With<Window>, _>(|w: Res<Weather>| {
            Conditioning::new(PromptWeights::one(w.0))
        });
    let e = app
        .world_mut()
        .spawn((
            Window,
            HeliosScreen::new(PromptWeights::one("dawn")).with_seed(3),
        ))
        .id();

    let mut prompts: BTreeMap<u64, PromptWeights> = BTreeMap::new();
    let record = |w: &World, prompts: &mut BTreeMap<u64, PromptWeights>| {
        let stats = screen(w, e).1;
        if let (Some(i), Some(p)) = (stats.last_chunk_index, &stats.last_chunk_prompt) {
            prompts.insert(i, p.clone());
        }
    };
    update_until(&mut app, DEADLINE, |w| {
        record(w, &mut prompts);
        screen(w, e).1.chunks >= 2
    })?;
    assert!(
        prompts.values().all(|p| *p == PromptWeights::one("day")),
        "the conditioning system overrides the spawn prompt from the first chunk: {prompts:?}"
    );

    app.world_mut().resource_mut::<Weather>().0 = "night";
    let received_at_change = screen(app.world(), e).0.chunks_received();
    update_until(&mut app, DEADLINE, |w| {
        record(w, &mut prompts);
        screen(w, e).0.chunks_received() >= received_at_change + 2
    })?;
    let next = received_at_change + 1;
    assert_eq!(
        prompts.get(&next),
        Some(&PromptWeights::one("night")),
        "chunk {next}, the first generated after the change, uses the new prompt: {prompts:?}"
    );
    for (i, p) in &prompts {
        if *i < received_at_change {
            assert_eq!(
                *p,
                PromptWeights::one("day"),
                "chunk {i} was generated before the change"
            );
        }
    }
    Ok(())
}

#[test]
fn off_screen_screens_pause_and_resume_with_their_history() -> Result<(), String> {
    let settings = HeliosSettings {
        visibility: VisibilitySource::Components,
        ..pattern_settings()
    };
    let (mut app, _dir) = test_app(settings);
    let e = app
        .world_mut()
        .spawn((
            HeliosScreen::new(PromptWeights::one("forest")),
            ViewVisibility::VISIBLE,
        ))
        .id();
    update_until(&mut app, DEADLINE, |w| {
        screen(w, e).0.chunks_received() >= 2 && screen(w, e).1.frames_shown >= 3
    })?;

    app.world_mut().entity_mut(e).insert(ViewVisibility::HIDDEN);
    app.update();
    let (stream, _) = screen(app.world(), e);
    let (id, consumed, received) = (
        stream.stream_id(),
        stream.frames_consumed(),
        stream.chunks_received(),
    );
    let pixels = screen_pixels(app.world(), e);
    for _ in 0..100 {
        app.update();
        std::thread::sleep(Duration::from_millis(2));
    }
    let (stream, stats) = screen(app.world(), e);
    assert_eq!(stats.state, StreamState::Hidden);
    assert_eq!(
        stream.frames_consumed(),
        consumed,
        "no frame is played while off screen"
    );
    assert_eq!(
        screen_pixels(app.world(), e),
        pixels,
        "the image holds its frame"
    );
    assert!(
        stream.chunks_received() <= received + 1,
        "at most the chunk in flight arrives while hidden"
    );
    assert_eq!(
        stream.stream_id(),
        id,
        "the stream stays open (history kept)"
    );
    let last_before = stats
        .last_chunk_index
        .expect("chunks arrived before hiding");

    app.world_mut()
        .entity_mut(e)
        .insert(ViewVisibility::VISIBLE);
    update_until(&mut app, DEADLINE, |w| {
        screen(w, e)
            .1
            .last_chunk_index
            .is_some_and(|i| i > last_before + 1)
    })?;
    let (stream, stats) = screen(app.world(), e);
    assert_eq!(stream.stream_id(), id, "same stream after resuming");
    assert!(stream.frames_consumed() > consumed, "playback resumed");
    assert_eq!(stats.state, StreamState::Playing);
    assert!(
        stats.last_chunk_index.unwrap() > last_before,
        "chunk indices continue: history was kept"
    );
    Ok(())
}

#[test]
fn a_new_seed_restarts_the_stream() -> Result<(), String> {
    let (mut app, _dir) = test_app(pattern_settings());
    let e = app
        .world_mut()
        .spawn(HeliosScreen::new(PromptWeights::one("ocean")))
        .id();
    update_until(&mut app, DEADLINE, |w| {
        screen(w, e).0.chunks_received() >= 2
    })?;
    let old = screen(app.world(), e).0.stream_id();
    app.world_mut()
        .get_mut::<HeliosScreen>(e)
        .expect("screen")
        .seed = 9;
    update_until(&mut app, DEADLINE, |w| {
        let s = screen(w, e).0;
        s.stream_id() != old && s.chunks_received() >= 1
    })?;
    assert_eq!(
        screen(app.world(), e).1.last_chunk_index,
        Some(0),
        "a restarted stream begins at chunk 0"
    );
    Ok(())
}

/// Screens, their stats, the settings, the status and the messages are registered for reflection, so an
/// inspector, a scene or Bevy's remote protocol can read them, and edit a screen as a game would.
#[test]
fn screens_settings_status_and_messages_are_reflected() {
    use bevy::ecs::reflect::{ReflectComponent, ReflectResource};
    use bevy::reflect::{ReflectMut, ReflectRef};
    use bevy_helios::cutscene::{CutsceneFailed, CutsceneFinished, CutsceneShotStarted};
    use bevy_helios::screen::HeliosStream;
    use std::any::TypeId;

    let (mut app, _dir) = test_app(pattern_settings());
    let screen = app
        .world_mut()
        .spawn(HeliosScreen::new(
            PromptWeights::one("day").with("night", 0.5),
        ))
        .id();
    app.update();

    let registry = app.world().resource::<AppTypeRegistry>().clone();
    let registry = registry.read();
    let components = [
        ("HeliosScreen", TypeId::of::<HeliosScreen>()),
        ("HeliosStream", TypeId::of::<HeliosStream>()),
        ("HeliosStreamStats", TypeId::of::<HeliosStreamStats>()),
    ];
    for (name, id) in components {
        assert!(
            registry.get_type_data::<ReflectComponent>(id).is_some(),
            "{name} is not registered as a reflected component"
        );
    }
    for (name, id) in [
        ("HeliosSettings", TypeId::of::<HeliosSettings>()),
        ("HeliosStatus", TypeId::of::<HeliosStatus>()),
    ] {
        assert!(
            registry.get_type_data::<ReflectResource>(id).is_some(),
            "{name} is not registered as a reflected resource"
        );
    }
    for (name, id) in [
        ("PlayCutscene", TypeId::of::<PlayCutscene>()),
        ("SkipCutscene", TypeId::of::<SkipCutscene>()),
        ("CutsceneShotStarted", TypeId::of::<CutsceneShotStarted>()),
        ("CutsceneFinished", TypeId::of::<CutsceneFinished>()),
        ("CutsceneFailed", TypeId::of::<CutsceneFailed>()),
        ("StreamFailed", TypeId::of::<StreamFailed>()),
        ("HeliosLoadFailed", TypeId::of::<HeliosLoadFailed>()),
    ] {
        assert!(registry.get(id).is_some(), "{name} is not registered");
    }

    // Read and edit the screen through reflection, as an inspector does.
    let reflect_screen = registry
        .get_type_data::<ReflectComponent>(TypeId::of::<HeliosScreen>())
        .expect("registered above")
        .clone();
    drop(registry);
    {
        let entity = app.world().entity(screen);
        let value = reflect_screen
            .reflect(entity)
            .expect("the entity has a screen");
        let ReflectRef::Struct(fields) = value.reflect_ref() else {
            panic!("HeliosScreen reflects as a struct");
        };
        let prompt = fields.field("prompt").expect("a `prompt` field");
        let ReflectRef::TupleStruct(prompt) = prompt.reflect_ref() else {
            panic!("PromptWeights reflects as a tuple struct");
        };
        let ReflectRef::Map(weights) = prompt.field(0).expect("the weights").reflect_ref() else {
            panic!("the weights reflect as a map");
        };
        let night = weights
            .get(&"night".to_string())
            .and_then(|w| w.try_downcast_ref::<f32>())
            .copied();
        assert_eq!(night, Some(0.5), "the `night` weight read by reflection");
    }
    {
        let entity = app.world_mut().entity_mut(screen);
        let mut value = reflect_screen
            .reflect_mut(entity)
            .expect("the entity has a screen");
        let ReflectMut::Struct(fields) = value.reflect_mut() else {
            panic!("HeliosScreen reflects as a struct");
        };
        fields
            .field_mut("paused")
            .expect("a `paused` field")
            .apply(&true);
    }
    assert!(
        app.world().get::<HeliosScreen>(screen).unwrap().paused,
        "the screen was paused through reflection"
    );

    // Settings reflect field by field; the status as an opaque value that prints.
    let settings: &dyn Reflect = app.world().resource::<HeliosSettings>();
    let ReflectRef::Struct(fields) = settings.reflect_ref() else {
        panic!("HeliosSettings reflects as a struct");
    };
    assert_eq!(
        fields
            .field("playout_fps")
            .and_then(|v| v.try_downcast_ref::<f32>()),
        Some(&24.0)
    );
    let status: &dyn Reflect = app.world().resource::<HeliosStatus>();
    assert!(
        matches!(status.reflect_ref(), ReflectRef::Opaque(_)),
        "HeliosStatus reflects as an opaque value"
    );
}
