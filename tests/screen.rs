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
