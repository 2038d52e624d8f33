//! Nothing a user or a file feeds the core crashes it: one case per class of bad input, each asserting the
//! typed error and that its message names the file or field (manifest numbers, saved states, weight files,
//! prompt weights). The seeded fuzz loops over the same classes are in `tests/fuzz_input.rs`.

mod support;

use std::path::Path;

use bevy_helios::core::limits::MAX_STATE_ELEMENTS;
use bevy_helios::core::manifest::ModelManifest;
use bevy_helios::core::model::HeliosModel;
use bevy_helios::core::runtime::{OrtModel, RuntimeConfig};
use bevy_helios::core::sampler::history::HistoryRing;
use bevy_helios::core::stream::{GenerationState, StreamConfig};
use bevy_helios::prelude::*;
use support::{get_field, root, scratch_model, set_field};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn tiny_text() -> String {
    std::fs::read_to_string(root().join("models/helios-tiny/manifest.ron"))
        .expect("models/helios-tiny/manifest.ron")
}

/// Parses `text` as `models/helios-tiny/manifest.ron` with one edit and returns the error's field.
fn manifest_field(from: &str, to: &str) -> (String, String) {
    let text = tiny_text();
    assert!(text.contains(from), "the tiny manifest has `{from}`");
    let path = Path::new("models/helios-tiny/manifest.ron");
    match ModelManifest::parse(&text.replacen(from, to, 1), path) {
        Err(err @ HeliosError::ManifestInvalid { .. }) => {
            let HeliosError::ManifestInvalid { ref field, .. } = err else {
                unreachable!()
            };
            let message = err.to_string();
            assert!(
                message.contains("helios-tiny/manifest.ron") && message.contains(field.as_str()),
                "the message names the file and the field: {message}"
            );
            assert!(message.len() < 600, "messages stay short: {message}");
            (field.clone(), message)
        }
        Err(other) => panic!("`{from}` -> `{to}`: expected ManifestInvalid, got {other}"),
        Ok(_) => panic!("`{from}` -> `{to}` must not validate"),
    }
}

#[test]
fn absurd_manifest_numbers_name_their_field() {
    let u64_max = u64::MAX.to_string();
    let cases: &[(&str, &str, &str)] = &[
        // (from, to, field the error must name)
        ("stages: 3", "stages: 200", "scheduler.stages"),
        (
            "num_train_timesteps: 1000",
            "num_train_timesteps: 4000000000",
            "scheduler.num_train_timesteps",
        ),
        (
            "history_sizes: [16, 2, 1]",
            "history_sizes: [4000000000000, 2, 1]",
            "history_sizes",
        ),
        (
            "pyramid_steps: [2, 2, 2]",
            "pyramid_steps: [2, 0, 2]",
            "pyramid_steps",
        ),
        (
            "pyramid_steps: [2, 2, 2]",
            "pyramid_steps: [2, 2, 9000000]",
            "pyramid_steps",
        ),
        (
            "stage_range: [0.0, 0.3333333333333333,",
            "stage_range: [0.0, 1.0,",
            "scheduler.stage_range",
        ),
        ("gamma: 0.3333333333333333", "gamma: NaN", "scheduler.gamma"),
        (
            "vae_scale_factor_spatial: 8",
            "vae_scale_factor_spatial: 0",
            "vae_scale_factor_spatial",
        ),
        (
            "latent_frames_per_chunk: 9",
            &format!("latent_frames_per_chunk: {u64_max}"),
            "latent_frames_per_chunk",
        ),
        // a value that parses and passes its own range but disagrees with a graph: named at load, not
        // as a shape mismatch on the first chunk
        (
            "vae_scale_factor_temporal: 4",
            "vae_scale_factor_temporal: 5",
            "graphs.vae_decoder.outputs.video",
        ),
        (
            "latent_frames_per_chunk: 9",
            "latent_frames_per_chunk: 10",
            "graphs.denoiser_stage0.inputs.hidden_states",
        ),
        // μ < 0 turns every σ of the schedule negative or above 1
        ("base_shift: 0.5", "base_shift: -5.0", "scheduler"),
        (
            "file: \"embeddings.safetensors\"",
            "file: \"../../etc/passwd\"",
            "embeddings.file",
        ),
        ("latent_channels: 16", "latent_channels: -16", "(syntax)"),
    ];
    for (from, to, want) in cases {
        let (field, message) = manifest_field(from, to);
        assert_eq!(&field, want, "`{from}` -> `{to}`: {message}");
    }
}

#[test]
fn a_history_ring_too_large_for_memory_is_refused_before_allocating() {
    match HistoryRing::try_new([1 << 40, 2, 1], 16, 1024, 1024) {
        Err(HeliosError::AllocationTooLarge { limit, what, .. }) => {
            assert_eq!(limit, MAX_STATE_ELEMENTS);
            assert!(what.contains("history"), "{what}");
        }
        other => panic!("expected AllocationTooLarge, got {other:?}"),
    }
}

fn tiny_model() -> Result<HeliosModel, HeliosError> {
    HeliosModel::load(root().join("models/helios-tiny"), &RuntimeConfig::cpu())
}

/// A saved state of helios-tiny after one chunk, as RON text.
fn saved(model: &mut HeliosModel) -> Result<String, HeliosError> {
    let mut state = model.new_stream(&StreamConfig::new(PromptWeights::one("night"), 3))?;
    model.next_chunk(&mut state)?;
    state.to_ron()
}

fn state_field(model: &HeliosModel, text: &str) -> String {
    match model.restore(text) {
        Err(err @ HeliosError::StateInvalid { .. }) => {
            let message = err.to_string();
            let HeliosError::StateInvalid { field, .. } = err else {
                unreachable!()
            };
            assert!(
                message.contains(&field) && message.contains("delete the save"),
                "the message names the field and what to do: {message}"
            );
            field
        }
        Err(other) => panic!("expected StateInvalid, got {other}"),
        Ok(_) => panic!("a damaged state must not restore"),
    }
}

#[test]
fn damaged_saved_states_are_refused_by_restore() -> TestResult {
    let mut model = tiny_model()?;
    let text = saved(&mut model)?;
    model.restore(&text)?;
    let frames = get_field(&text, "frames").ok_or("frames")?;
    let anchor = get_field(&text, "anchor").ok_or("anchor")?;
    assert!(anchor.starts_with("Some(["), "one chunk sets the anchor");
    let short_frames = format!("{}]", &frames[..frames.rfind(',').ok_or("comma")?]);
    let short_anchor = format!("{}])", &anchor[..anchor.rfind(',').ok_or("comma")?]);
    let nan_frames = frames.replacen('[', "[NaN,", 1);
    let nan_frames = format!("{}]", &nan_frames[..nan_frames.rfind(',').ok_or("comma")?]);
    let u64_max = u64::MAX.to_string();
    let cases: &[(&str, &str, &str)] = &[
        ("head", "19", "history.head"),
        ("head", &u64_max, "history.head"),
        ("frames", &short_frames, "history.frames"),
        ("frames", &nan_frames, "history.frames"),
        ("anchor", &short_anchor, "history.anchor"),
        ("sizes", "(16,2,2)", "history.sizes"),
        ("sizes", &format!("({u64_max},2,1)"), "history.sizes"),
        ("channels", "4", "history.channels"),
        ("chunk_index", &u64_max, "chunk_index"),
        ("state", "(0,0,0,0)", "noise.state"),
        ("spare", "Some(9221120237041090560)", "noise.spare"), // NaN bits
        ("chunks", "0", "prompt.chunks"),
        ("seed", "-1", "(syntax)"),
    ];
    for (key, value, want) in cases {
        let field = state_field(&model, &set_field(&text, key, value));
        assert_eq!(&field, want, "`{key}` = {:.40}", value);
    }
    // NaN prompt weights in a save are the weights' error, not the model's
    let err = model
        .restore(&set_field(&text, "target", "({\"night\":NaN})"))
        .unwrap_err();
    assert!(matches!(err, HeliosError::InvalidWeights { .. }), "{err}");
    Ok(())
}

#[test]
fn a_state_of_another_model_is_refused_by_restore_and_by_next_chunk() -> TestResult {
    let mut model = tiny_model()?;
    let text = saved(&mut model)?;
    for (key, value, shows) in [
        ("model", "\"helios-14b\"", "helios-14b"),
        ("model_hash", "\"0123456789abcdef\"", "0123456789abcdef"),
    ] {
        match model.restore(&set_field(&text, key, value)) {
            Err(err @ HeliosError::StateModelMismatch { .. }) => {
                let message = err.to_string();
                assert!(
                    message.contains(shows) && message.contains("helios-tiny"),
                    "names both models: {message}"
                );
            }
            other => panic!("`{key}`: expected StateModelMismatch, got {other:?}"),
        }
        // and a state handed straight to next_chunk, without restore
        let mut state = GenerationState::from_ron(&set_field(&text, key, value))?;
        let before = state.clone();
        assert!(matches!(
            model.next_chunk(&mut state),
            Err(HeliosError::StateModelMismatch { .. })
        ));
        assert!(
            state.to_ron()? == before.to_ron()?,
            "a refused chunk leaves the state as it was"
        );
    }
    // a save from before model hashes: checked by name, still continues
    let old = text.replacen(
        &format!(
            "model_hash:{},",
            get_field(&text, "model_hash").ok_or("model_hash")?
        ),
        "",
        1,
    );
    assert!(!old.contains("model_hash"));
    let mut state = model.restore(&old)?;
    model.next_chunk(&mut state)?;
    Ok(())
}

#[test]
fn next_chunk_checks_a_state_before_sampling() -> TestResult {
    let mut model = tiny_model()?;
    let text = saved(&mut model)?;
    // parsed without restore: a head outside the ring used to panic after a full sampling pass
    for (key, value, want) in [
        ("head", "400", "history.head"),
        ("chunk_index", "18446744073709551615", "chunk_index"),
    ] {
        let mut state = GenerationState::from_ron(&set_field(&text, key, value))?;
        match model.next_chunk(&mut state) {
            Err(HeliosError::StateInvalid { field, .. }) => assert_eq!(field, want),
            other => panic!("`{key}`: expected StateInvalid, got {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn nan_inf_and_negative_prompt_weights_are_weight_errors_on_every_path() -> TestResult {
    let mut model = tiny_model()?;
    for bad in [f32::NAN, f32::INFINITY, -0.5] {
        let weights = PromptWeights::one("day").with("night", bad);
        let is_weights = |r: Result<(), HeliosError>| matches!(r, Err(HeliosError::InvalidWeights { ref reason }) if reason.contains("`night`"));
        assert!(
            is_weights(weights.validate().map(|_| ())),
            "validate, {bad}"
        );
        assert!(
            is_weights(model.check_prompt(&weights)),
            "check_prompt, {bad}"
        );
        assert!(
            is_weights(
                model
                    .new_stream(&StreamConfig::new(weights.clone(), 1))
                    .map(|_| ())
            ),
            "new_stream, {bad}"
        );
        let mut state = model.new_stream(&StreamConfig::new(PromptWeights::one("day"), 1))?;
        assert!(
            is_weights(state.try_set_prompt(weights.clone())),
            "try_set_prompt, {bad}"
        );
        // set_prompt cannot fail; the next chunk refuses the weights instead of blaming the model
        state.set_prompt(weights);
        let before = state.clone();
        assert!(
            is_weights(model.next_chunk(&mut state).map(|_| ())),
            "next_chunk after set_prompt, {bad}"
        );
        // compared as text: the NaN weight is not equal to itself
        assert!(
            state.to_ron()? == before.to_ron()?,
            "the refused chunk leaves the state as it was"
        );
    }
    for spec in ["day=NaN", "day=1,night=-2", "day=inf", "day=abc"] {
        assert!(
            matches!(
                PromptWeights::parse(spec),
                Err(HeliosError::InvalidWeights { .. })
            ),
            "{spec}"
        );
    }
    Ok(())
}

#[test]
fn a_huge_unknown_prompt_name_is_cut_in_the_message() -> TestResult {
    let model = tiny_model()?;
    let name = "dusk".repeat(250_000); // 1 MB
    let err = model
        .check_prompt(&PromptWeights::one(name.as_str()))
        .unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, HeliosError::UnknownPrompt { .. }),
        "{message:.200}"
    );
    assert!(
        message.len() < 600 && message.contains("1000000 bytes"),
        "a 1 MB name is cut to about 100 characters and its size shown ({} bytes): {message:.300}",
        message.len()
    );
    let err = PromptWeights::parse(&format!("day={}", "9".repeat(1 << 20))).map(|_| ());
    // a 1 MB number is a number (infinite): the error shows the value, not the text
    assert!(
        matches!(&err, Err(e @ HeliosError::InvalidWeights { .. }) if e.to_string().len() < 600),
        "{err:?}"
    );
    Ok(())
}

/// helios-nano's external data (`*.onnx.data`) is listed in its manifest with hashes and sizes.
fn nano() -> std::path::PathBuf {
    root().join("models/helios-nano")
}

#[test]
fn altered_or_truncated_external_weights_name_the_weights_file() -> TestResult {
    let manifest = ModelManifest::load(&nano())?;
    assert!(
        manifest
            .external_data
            .iter()
            .any(|d| d.file == "vae_decoder.onnx.data"),
        "helios-nano lists its external data"
    );
    let dir = scratch_model(&nano(), "weights", &["vae_decoder.onnx.data"])?;
    let data = dir.join("vae_decoder.onnx.data");
    let mut bytes = std::fs::read(&data)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40; // one bit of the last weight
    std::fs::write(&data, &bytes)?;
    // The files are checked before any session is made, so no ONNX Runtime run happens here.
    match OrtModel::load(&dir, &manifest, &RuntimeConfig::cpu()) {
        Err(HeliosError::ModelCorrupt { path, reason }) => {
            assert!(
                path.ends_with("vae_decoder.onnx.data"),
                "{}",
                path.display()
            );
            assert!(reason.contains("SHA-256"), "{reason}");
        }
        Err(other) => panic!("expected ModelCorrupt, got {other}"),
        Ok(_) => panic!("altered weights must not load"),
    }
    // Truncated, with hash checks off: the size still names the weights file, not the graph.
    std::fs::write(&data, &bytes[..bytes.len() / 2])?;
    let unverified = RuntimeConfig {
        verify_hashes: false,
        ..RuntimeConfig::cpu()
    };
    match OrtModel::load(&dir, &manifest, &unverified) {
        Err(err @ HeliosError::ModelCorrupt { .. }) => {
            let message = err.to_string();
            let HeliosError::ModelCorrupt { path, .. } = err else {
                unreachable!()
            };
            assert!(path.ends_with("vae_decoder.onnx.data"), "{message}");
            assert!(message.contains("bytes"), "{message}");
        }
        Err(other) => panic!("expected ModelCorrupt, got {other}"),
        Ok(_) => panic!("truncated weights must not load"),
    }
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[test]
fn unsupported_and_internal_errors_are_typed() {
    let err = HeliosError::Unsupported {
        what: "image conditioning".into(),
    };
    assert_eq!(err.to_string(), "not supported: image conditioning");
    let err = HeliosError::Internal {
        context: "x".into(),
    };
    assert!(err.to_string().contains("please report"));
}
