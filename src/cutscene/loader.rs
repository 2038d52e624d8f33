//! `*.cutscene.ron` → [`Cutscene`]: strict parsing (`deny_unknown_fields`), then range checks, with
//! typed errors that say which shot and field are wrong and why.

use std::collections::BTreeMap;

use bevy::asset::io::Reader;
use bevy::asset::{AssetLoader, LoadContext};
use bevy::prelude::*;
use serde::Deserialize;

use crate::core::embedding::PromptWeights;
use crate::error::echo;

/// Longest shot, seconds.
const MAX_SHOT_SECONDS: f32 = 600.0;
/// Longest shot, chunks.
const MAX_SHOT_CHUNKS: u32 = 1000;
/// Most shots in one cutscene.
const MAX_SHOTS: usize = 256;
/// Longest crossfade, chunks.
const MAX_CROSSFADE: u32 = 64;
/// Most prompt names in one shot: each free-text name costs an embedding on the worker.
const MAX_PROMPT_NAMES: usize = 64;
/// Longest prompt name, in the file and after its variables are filled in, bytes. Free text is cut at
/// 128 tokens anyway; the bound stops a `{variable}` repeated in a long name from multiplying a long
/// value into gigabytes.
const MAX_PROMPT_BYTES: usize = 4096;
/// Range of the playout rate a `Seconds` duration is converted at ([`ShotDuration::chunks`] is public and
/// takes any `f32`): a shot then lasts at most `MAX_SHOT_SECONDS * MAX_PLAYOUT_FPS` frames, so the frame
/// sums of playback cannot overflow. The low end is `HeliosSettings::frame_duration`'s.
const MIN_PLAYOUT_FPS: f32 = 0.1;
/// See [`MIN_PLAYOUT_FPS`].
const MAX_PLAYOUT_FPS: f32 = 1000.0;

/// A scripted sequence of shots, each a prompt held for a while, played fullscreen.
///
/// ```ron
/// (
///     skippable: true,
///     seed: 7,
///     shots: [
///         (name: "opening", prompt: {"{choice}_intro": 1.0}, duration: Chunks(2)),
///         (prompt: {"portal": 0.7, "storm": 0.3}, duration: Seconds(3.0), transition: Crossfade(2)),
///         (prompt: {"title": 1.0}, duration: Chunks(1), transition: Cut, seed: Some(99)),
///     ],
/// )
/// ```
#[derive(Asset, TypePath, Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cutscene {
    /// Display name (logs, inspector).
    #[serde(default)]
    pub name: Option<String>,
    /// Whether [`SkipCutscene`](super::SkipCutscene) may end it early.
    #[serde(default = "yes")]
    pub skippable: bool,
    /// Seed of the first shot (a `PlayCutscene` may override it).
    #[serde(default)]
    pub seed: u64,
    /// The shots, in order.
    pub shots: Vec<Shot>,
}

fn yes() -> bool {
    true
}

/// One shot: prompt weights held for a duration.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shot {
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Prompt name → weight. Names may contain `{variable}`s filled in when the cutscene starts.
    pub prompt: BTreeMap<String, f32>,
    /// How long the shot lasts.
    pub duration: ShotDuration,
    /// How the shot begins (ignored for the first shot).
    #[serde(default)]
    pub transition: Transition,
    /// A new seed; only with `transition: Cut` (a crossfade continues the same stream).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Condition the shot on the camera image given to `PlayCutscene` (image-to-video).
    #[serde(default)]
    pub camera: bool,
}

/// A shot's length.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
pub enum ShotDuration {
    /// Seconds of playout, rounded up to whole chunks.
    Seconds(f32),
    /// Generated chunks (33 frames each for Helios).
    Chunks(u32),
}

impl ShotDuration {
    /// Whole chunks at `fps` playout with `frames_per_chunk`, at least 1. `fps` is clamped to
    /// 0.1..=1000 (NaN counts as 0.1), so a validated duration gives at most 600 000 chunks.
    pub fn chunks(&self, fps: f32, frames_per_chunk: usize) -> u64 {
        match *self {
            Self::Chunks(n) => u64::from(n.max(1)),
            Self::Seconds(s) => {
                let fps = if fps.is_nan() {
                    MIN_PLAYOUT_FPS
                } else {
                    fps.clamp(MIN_PLAYOUT_FPS, MAX_PLAYOUT_FPS)
                };
                let frames = f64::from(s.clamp(0.0, MAX_SHOT_SECONDS)) * f64::from(fps);
                (frames / frames_per_chunk.max(1) as f64).ceil().max(1.0) as u64
            }
        }
    }
}

/// How a shot follows the previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Transition {
    /// Same stream (history continues); the prompt embedding blends over this many chunks.
    Crossfade(u32),
    /// A new stream: fresh history and the shot's seed.
    Cut,
}

impl Default for Transition {
    fn default() -> Self {
        Self::Crossfade(1)
    }
}

/// Why a cutscene file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CutsceneLoaderError {
    /// Reading the file failed.
    #[error("could not read the cutscene: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not valid cutscene RON (position included).
    #[error("cutscene RON does not parse: {0}")]
    Ron(#[from] ron::error::SpannedError),
    /// It parses but a value is out of range.
    #[error("shot {shot} is invalid at `{field}`: {reason}; fix the cutscene RON")]
    Invalid {
        /// Index of the shot (0-based).
        shot: usize,
        /// The shot's field that is wrong (`shots` for the list itself).
        field: &'static str,
        /// What is wrong (user text in it is cut to 100 characters).
        reason: String,
    },
}

/// Checks a `{variable}` template: balanced braces, identifier names.
fn check_template(name: &str) -> Result<(), String> {
    let mut rest = name;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err(format!(
                "prompt name `{}` has a `}}` without `{{`",
                echo(name)
            ));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("prompt name `{}` has an unclosed `{{`", echo(name)))?;
        let var = &after[..close];
        if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`{{{}}}` in `{}` is not a variable name (letters, digits, `_`)",
                echo(var),
                echo(name)
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// Fills `{variable}`s; the result is at most [`MAX_PROMPT_BYTES`] long.
pub(crate) fn fill_template(
    name: &str,
    variables: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(name.len().min(MAX_PROMPT_BYTES));
    let push = |out: &mut String, text: &str| {
        if out.len() + text.len() > MAX_PROMPT_BYTES {
            return Err(format!(
                "prompt `{}` is longer than {MAX_PROMPT_BYTES} bytes with its variables filled in",
                echo(name)
            ));
        }
        out.push_str(text);
        Ok(())
    };
    let mut rest = name;
    while let Some(open) = rest.find('{') {
        push(&mut out, &rest[..open])?;
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in `{}`", echo(name)))?;
        let var = &after[..close];
        let value = variables.get(var).ok_or_else(|| {
            format!(
                "variable `{}` (in prompt `{}`) was not given to PlayCutscene",
                echo(var),
                echo(name)
            )
        })?;
        push(&mut out, value)?;
        rest = &after[close + 1..];
    }
    push(&mut out, rest)?;
    Ok(out)
}

impl Cutscene {
    /// Parses and checks RON text.
    pub fn from_ron(bytes: &[u8]) -> Result<Self, CutsceneLoaderError> {
        let cutscene: Cutscene = ron::de::from_bytes(bytes)?;
        cutscene.validate()?;
        Ok(cutscene)
    }

    /// Range checks after parsing.
    pub fn validate(&self) -> Result<(), CutsceneLoaderError> {
        let invalid =
            |shot: usize, field: &'static str, reason: String| CutsceneLoaderError::Invalid {
                shot,
                field,
                reason,
            };
        if self.shots.is_empty() {
            return Err(invalid(
                0,
                "shots",
                "a cutscene needs at least one shot".into(),
            ));
        }
        if self.shots.len() > MAX_SHOTS {
            return Err(invalid(
                MAX_SHOTS,
                "shots",
                format!("{} shots; at most {MAX_SHOTS}", self.shots.len()),
            ));
        }
        for (i, shot) in self.shots.iter().enumerate() {
            if shot.prompt.is_empty() {
                return Err(invalid(i, "prompt", "the prompt has no names".into()));
            }
            if shot.prompt.len() > MAX_PROMPT_NAMES {
                return Err(invalid(
                    i,
                    "prompt",
                    format!(
                        "{} prompt names; at most {MAX_PROMPT_NAMES}",
                        shot.prompt.len()
                    ),
                ));
            }
            for (name, weight) in &shot.prompt {
                if name.trim().is_empty() {
                    return Err(invalid(i, "prompt", "a prompt name is empty".into()));
                }
                if name.len() > MAX_PROMPT_BYTES {
                    return Err(invalid(
                        i,
                        "prompt",
                        format!(
                            "prompt name `{}` is longer than {MAX_PROMPT_BYTES} bytes",
                            echo(name)
                        ),
                    ));
                }
                check_template(name).map_err(|r| invalid(i, "prompt", r))?;
                if !weight.is_finite() || *weight < 0.0 {
                    return Err(invalid(
                        i,
                        "prompt",
                        format!("weight {weight} of `{}` must be finite and ≥ 0", echo(name)),
                    ));
                }
            }
            if !shot.prompt.values().any(|w| *w > 0.0) {
                return Err(invalid(
                    i,
                    "prompt",
                    "at least one prompt weight must be positive".into(),
                ));
            }
            // the sum the core divides by (`PromptWeights::validate`)
            let total: f32 = shot.prompt.values().sum();
            if !total.is_finite() {
                return Err(invalid(
                    i,
                    "prompt",
                    format!("the prompt weights sum to {total}; the sum must be finite"),
                ));
            }
            match shot.duration {
                ShotDuration::Seconds(s) if !(s > 0.0 && s <= MAX_SHOT_SECONDS) => {
                    return Err(invalid(
                        i,
                        "duration",
                        format!("duration {s} s is outside (0, {MAX_SHOT_SECONDS}]"),
                    ));
                }
                ShotDuration::Chunks(n) if n == 0 || n > MAX_SHOT_CHUNKS => {
                    return Err(invalid(
                        i,
                        "duration",
                        format!("duration {n} chunks is outside 1..={MAX_SHOT_CHUNKS}"),
                    ));
                }
                _ => {}
            }
            if let Transition::Crossfade(n) = shot.transition {
                if n == 0 || n > MAX_CROSSFADE {
                    return Err(invalid(
                        i,
                        "transition",
                        format!("crossfade of {n} chunks is outside 1..={MAX_CROSSFADE}"),
                    ));
                }
                if i > 0 && shot.seed.is_some() {
                    return Err(invalid(
                        i,
                        "seed",
                        "a seed needs `transition: Cut` (a crossfade continues the previous stream)".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Prompt weights of a shot with its variables filled in. Fails, saying why, when a variable is
    /// missing, a filled name is blank or longer than 4096 bytes, or the filled weights fail
    /// [`PromptWeights::validate`]; names that fill to the same text add their weights.
    pub fn shot_prompt(
        &self,
        shot: usize,
        variables: &BTreeMap<String, String>,
    ) -> Result<PromptWeights, String> {
        let shot = self
            .shots
            .get(shot)
            .ok_or_else(|| format!("no shot {shot}"))?;
        let mut weights = PromptWeights::default();
        for (name, w) in &shot.prompt {
            let filled = fill_template(name, variables)?;
            if filled.trim().is_empty() {
                return Err(format!(
                    "prompt `{}` is empty with its variables filled in",
                    echo(name)
                ));
            }
            *weights.0.entry(filled).or_default() += *w;
        }
        weights.validate().map_err(|e| e.to_string())?;
        Ok(weights)
    }
}

/// Loads `*.cutscene.ron` files.
#[derive(Default, TypePath)]
pub struct CutsceneLoader;

impl AssetLoader for CutsceneLoader {
    type Asset = Cutscene;
    type Settings = ();
    type Error = CutsceneLoaderError;

    async fn load(
        &self,
        reader: &mut dyn Reader,
        _settings: &(),
        _load_context: &mut LoadContext<'_>,
    ) -> Result<Cutscene, CutsceneLoaderError> {
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).await?;
        Cutscene::from_ron(&bytes)
    }

    fn extensions(&self) -> &[&str] {
        &["cutscene.ron"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"(
        name: Some("t"),
        shots: [
            (prompt: {"{choice}_intro": 1.0}, duration: Chunks(2)),
            (prompt: {"night": 0.5, "storm": 0.5}, duration: Seconds(2.0), transition: Crossfade(2)),
            (prompt: {"title": 1.0}, duration: Chunks(1), transition: Cut, seed: Some(3)),
        ],
    )"#;

    #[test]
    fn parses_and_fills_variables() {
        let c = Cutscene::from_ron(GOOD.as_bytes()).expect("valid cutscene");
        assert_eq!(c.shots.len(), 3);
        assert!(c.skippable, "skippable defaults to true");
        let vars = BTreeMap::from([("choice".to_string(), "hero".to_string())]);
        assert_eq!(
            c.shot_prompt(0, &vars).unwrap(),
            PromptWeights::one("hero_intro")
        );
        let missing = c.shot_prompt(0, &BTreeMap::new()).unwrap_err();
        assert!(missing.contains("choice"), "{missing}");
        assert_eq!(
            c.shots[1].duration.chunks(24.0, 33),
            2,
            "2 s at 24 fps = 48 frames = 2 chunks"
        );
    }

    #[test]
    fn unknown_fields_and_bad_ranges_are_typed_errors() {
        let unknown = GOOD.replace("duration: Chunks(1)", "duration: Chunks(1), colour: 3");
        assert!(matches!(
            Cutscene::from_ron(unknown.as_bytes()),
            Err(CutsceneLoaderError::Ron(_))
        ));
        let zero = GOOD.replace("Seconds(2.0)", "Seconds(0.0)");
        assert!(matches!(
            Cutscene::from_ron(zero.as_bytes()),
            Err(CutsceneLoaderError::Invalid { shot: 1, .. })
        ));
        let seed = GOOD.replace(
            "transition: Crossfade(2)",
            "transition: Crossfade(2), seed: Some(1)",
        );
        assert!(matches!(
            Cutscene::from_ron(seed.as_bytes()),
            Err(CutsceneLoaderError::Invalid { shot: 1, .. })
        ));
        let brace = GOOD.replace("{choice}_intro", "{choice_intro");
        assert!(matches!(
            Cutscene::from_ron(brace.as_bytes()),
            Err(CutsceneLoaderError::Invalid { shot: 0, .. })
        ));
        let weights = GOOD.replace("\"title\": 1.0", "\"title\": 0.0");
        assert!(matches!(
            Cutscene::from_ron(weights.as_bytes()),
            Err(CutsceneLoaderError::Invalid { shot: 2, .. })
        ));
    }
}
