//! The graph contract: every ONNX graph key and port name the runtime reads, in one place.
//!
//! `tools/export` writes graphs under these names and `docs/graph-contract.md` describes them (shapes,
//! dtypes, what each graph computes); tests in this module check that both still name exactly what is
//! here, so a rename in one place fails `cargo test` instead of a model load.
//!
//! A graph's file is its key plus `.onnx`; the manifest lists the keys a model ships.

/// Graph keys (the manifest's `graphs` map; file = key + `.onnx`).
pub mod key {
    /// Prompt text → embedding (free-text models only).
    pub const TEXT_ENCODER: &str = "text_encoder";
    /// Normalised latents → video in [-1, 1].
    pub const VAE_DECODER: &str = "vae_decoder";
    /// Normalised latents → RGBA8 frames (the device loop's decoder).
    pub const VAE_DECODER_RGBA8: &str = "vae_decoder_rgba8";
    /// One frame → raw latent moments (image-to-video).
    pub const VAE_ENCODER_IMAGE: &str = "vae_encoder_image";
    /// A 33-frame clip → raw latent moments (video-to-video).
    pub const VAE_ENCODER_CLIP: &str = "vae_encoder_clip";
    /// Noise → the pyramid's stage-0 start point.
    pub const PYRAMID_DOWNSAMPLE: &str = "pyramid_downsample";
    /// History ring update after a chunk.
    pub const HISTORY_PUSH: &str = "history_push";
    /// History ring → the denoisers' short / mid / long inputs.
    pub const HISTORY_SLICES: &str = "history_slices";

    const DENOISER_PREFIX: &str = "denoiser_stage";
    const RENOISE_PREFIX: &str = "pyramid_renoise_stage";
    const DMD_STEP_PREFIX: &str = "dmd_step_stage";

    /// The denoiser (one transformer forward) of a pyramid stage.
    pub fn denoiser(stage: usize) -> String {
        format!("{DENOISER_PREFIX}{stage}")
    }

    /// The upsample + block noise that starts pyramid stage `stage` (1..stages).
    pub fn pyramid_renoise(stage: usize) -> String {
        format!("{RENOISE_PREFIX}{stage}")
    }

    /// The DMD update of a pyramid stage.
    pub fn dmd_step(stage: usize) -> String {
        format!("{DMD_STEP_PREFIX}{stage}")
    }

    /// Every key a model with `stages` pyramid stages can ship, in the contract doc's order.
    pub fn all(stages: usize) -> Vec<String> {
        let mut keys: Vec<String> = (0..stages).map(denoiser).collect();
        keys.extend(
            [
                VAE_DECODER,
                VAE_ENCODER_IMAGE,
                VAE_ENCODER_CLIP,
                PYRAMID_DOWNSAMPLE,
            ]
            .map(String::from),
        );
        keys.extend((1..stages).map(pyramid_renoise));
        keys.extend((0..stages).map(dmd_step));
        keys.extend(
            [
                HISTORY_PUSH,
                HISTORY_SLICES,
                VAE_DECODER_RGBA8,
                TEXT_ENCODER,
            ]
            .map(String::from),
        );
        keys
    }
}

/// Port (input and output) names. One name can be a port of several graphs: the graphs that pass a
/// buffer on name it the same way (`start` is an output of the pyramid graphs and an input of the DMD
/// step), which is what lets the device loop bind one buffer to both.
pub mod port {
    // Denoisers.
    /// Denoiser input: the sample being denoised.
    pub const HIDDEN_STATES: &str = "hidden_states";
    /// Denoiser input: the step's timestep (i64, shape `[1]`).
    pub const TIMESTEP: &str = "timestep";
    /// Denoiser input: the prompt embedding.
    pub const ENCODER_HIDDEN_STATES: &str = "encoder_hidden_states";
    /// Denoiser input: anchor + the newest history frame.
    pub const LATENTS_HISTORY_SHORT: &str = "latents_history_short";
    /// Denoiser input: the middle history frames.
    pub const LATENTS_HISTORY_MID: &str = "latents_history_mid";
    /// Denoiser input: the oldest history frames.
    pub const LATENTS_HISTORY_LONG: &str = "latents_history_long";
    /// Denoiser output, DMD step input: the predicted velocity.
    pub const VELOCITY: &str = "velocity";
    /// The denoiser's inputs, in the contract's order.
    pub const DENOISER_INPUTS: [&str; 6] = [
        HIDDEN_STATES,
        TIMESTEP,
        ENCODER_HIDDEN_STATES,
        LATENTS_HISTORY_SHORT,
        LATENTS_HISTORY_MID,
        LATENTS_HISTORY_LONG,
    ];

    // VAE.
    /// Decoder input: normalised latents.
    pub const LATENTS: &str = "latents";
    /// Decoder output (f32 in [-1, 1]) and encoder input.
    pub const VIDEO: &str = "video";
    /// RGBA8 decoder output (u8 [T, H, W, 4]).
    pub const RGBA: &str = "rgba";
    /// Encoder output: posterior mean (raw, not normalised).
    pub const MEAN: &str = "mean";
    /// Encoder output: posterior log-variance.
    pub const LOGVAR: &str = "logvar";

    // Pyramid and DMD step.
    /// Downsample input: the chunk's noise.
    pub const NOISE: &str = "noise";
    /// Output of the pyramid graphs, DMD step input: the stage's start point.
    pub const START: &str = "start";
    /// Renoise input: the previous stage's clean estimate; DMD step output.
    pub const X0: &str = "x0";
    /// Renoise input: block noise.
    pub const Z: &str = "z";
    /// DMD step input: the current sample.
    pub const SAMPLE: &str = "sample";
    /// DMD step input: this step's sigma.
    pub const SIGMA: &str = "sigma";
    /// DMD step input: the next step's sigma.
    pub const SIGMA_NEXT: &str = "sigma_next";
    /// DMD step output: the next sample.
    pub const NEXT: &str = "next";
    /// The DMD step's inputs, in the contract's order.
    pub const DMD_STEP_INPUTS: [&str; 5] = [SAMPLE, VELOCITY, START, SIGMA, SIGMA_NEXT];

    // History.
    /// History graphs input: the ring.
    pub const HISTORY: &str = "history";
    /// History push input: the finished chunk's latents.
    pub const CHUNK: &str = "chunk";
    /// History push output: the updated ring.
    pub const HISTORY_NEXT: &str = "history_next";
    /// History push output: the chunk's first latent frame (the next anchor).
    pub const FIRST_FRAME: &str = "first_frame";
    /// History slices input: the anchor frame.
    pub const ANCHOR: &str = "anchor";
    /// History slices output: anchor + newest frame.
    pub const SHORT: &str = "short";
    /// History slices output: middle frames.
    pub const MID: &str = "mid";
    /// History slices output: oldest frames.
    pub const LONG: &str = "long";

    // Text encoder.
    /// Text encoder input: token ids.
    pub const INPUT_IDS: &str = "input_ids";
    /// Text encoder input: 1 for tokens, 0 for padding.
    pub const ATTENTION_MASK: &str = "attention_mask";
    /// Text encoder output: the prompt embedding.
    pub const EMBEDDING: &str = "embedding";

    /// Every port name, for the checks against the doc and the export tool.
    pub const ALL: [&str; 31] = [
        HIDDEN_STATES,
        TIMESTEP,
        ENCODER_HIDDEN_STATES,
        LATENTS_HISTORY_SHORT,
        LATENTS_HISTORY_MID,
        LATENTS_HISTORY_LONG,
        VELOCITY,
        LATENTS,
        VIDEO,
        RGBA,
        MEAN,
        LOGVAR,
        NOISE,
        START,
        X0,
        Z,
        SAMPLE,
        SIGMA,
        SIGMA_NEXT,
        NEXT,
        HISTORY,
        CHUNK,
        HISTORY_NEXT,
        FIRST_FRAME,
        ANCHOR,
        SHORT,
        MID,
        LONG,
        INPUT_IDS,
        ATTENTION_MASK,
        EMBEDDING,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    fn repo_file(rel: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Names written `like_this` in backticks in a markdown file.
    fn backticked(text: &str) -> BTreeSet<String> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn names_are_unique() {
        let ports: BTreeSet<_> = port::ALL.iter().collect();
        assert_eq!(ports.len(), port::ALL.len(), "a port is listed twice");
        let keys = key::all(3);
        let unique: BTreeSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len(), "a key is listed twice");
    }

    #[test]
    fn the_contract_doc_names_every_key_and_port() {
        let doc = repo_file("docs/graph-contract.md");
        let named = backticked(&doc);
        // The doc writes staged keys once as `denoiser_stage0/1/2`.
        let staged = |k: &str| {
            let base = k.trim_end_matches(|c: char| c.is_ascii_digit());
            named.contains(k)
                || named.contains(&format!("{k}.onnx"))
                || named.iter().any(|n| n.starts_with(base) && n.contains('/'))
        };
        for k in key::all(3) {
            assert!(
                staged(&k),
                "docs/graph-contract.md does not name graph `{k}`"
            );
        }
        for p in port::ALL {
            assert!(
                doc.contains(&format!("`{p}`")),
                "docs/graph-contract.md does not name port `{p}`"
            );
        }
    }

    #[test]
    fn the_export_tool_uses_the_same_names() {
        // tools/export/contract.py mirrors this module; export.py and the fixture maker import it.
        let py = repo_file("tools/export/contract.py");
        let mut mirrored = BTreeSet::new();
        for line in py.lines() {
            let Some((name, value)) = line.split_once('=') else {
                continue;
            };
            let name = name.trim();
            let value = value.trim().trim_matches('"');
            if name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
                && !name.is_empty()
                && value
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
            {
                mirrored.insert(value.to_string());
            }
        }
        let mut ours: BTreeSet<String> = port::ALL.iter().map(|p| p.to_string()).collect();
        for k in [
            key::TEXT_ENCODER,
            key::VAE_DECODER,
            key::VAE_DECODER_RGBA8,
            key::VAE_ENCODER_IMAGE,
            key::VAE_ENCODER_CLIP,
            key::PYRAMID_DOWNSAMPLE,
            key::HISTORY_PUSH,
            key::HISTORY_SLICES,
            "denoiser_stage",
            "pyramid_renoise_stage",
            "dmd_step_stage",
        ] {
            ours.insert(k.into());
        }
        let missing: Vec<_> = ours.difference(&mirrored).collect();
        let extra: Vec<_> = mirrored.difference(&ours).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "tools/export/contract.py differs from graph_contract.rs: missing {missing:?}, extra {extra:?}"
        );
    }
}
