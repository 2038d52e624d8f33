//! Cutscenes: [`Cutscene`] assets (`*.cutscene.ron`, see [`loader`]) played fullscreen through a UI
//! `ImageNode` with a cutscene-priority [`HeliosScreen`], which pre-empts every other screen.
//!
//! Write [`PlayCutscene`] (with variables from game state, e.g. `choice = "hero"`); each shot's
//! prompt is set just before its first chunk is generated (the worker never runs past a shot
//! boundary), [`CutsceneShotStarted`] is written when a shot's first frame shows, and
//! [`CutsceneFinished`] is written and triggered when the last frame has played (or on
//! [`SkipCutscene`], or if the cutscene fails). Editing the file while it plays reloads it.

pub mod loader;

use std::collections::BTreeMap;

use std::time::Duration;

use bevy::asset::{AssetLoadFailedEvent, LoadState};
use bevy::prelude::*;

pub use loader::{Cutscene, CutsceneLoader, CutsceneLoaderError, Shot, ShotDuration, Transition};

use crate::core::embedding::PromptWeights;
use crate::diagnostics::MainThreadCost;
use crate::screen::{HeliosScreen, HeliosStream, HeliosStreamStats, StreamPriority, StreamState};
use crate::settings::HeliosSettings;
use crate::status::HeliosModelInfo;

/// Starts a cutscene.
///
/// Every request ends with a [`CutsceneFinished`]: a `Failed` outcome, with the cause, if its asset fails to
/// load, is still loading after [`HeliosSettings::cutscene_load_timeout`], or is a handle nothing loads
/// (`Handle::default()`, a removed asset; after a one-second grace).
#[derive(Message, Clone, Debug, Reflect)]
#[reflect(Debug)]
pub struct PlayCutscene {
    /// The cutscene asset (it may still be loading).
    pub cutscene: Handle<Cutscene>,
    /// Values for `{variable}`s in prompt names, read from game state now.
    pub variables: BTreeMap<String, String>,
    /// Image for shots with `camera: true` (e.g. a camera's render target).
    pub camera_image: Option<Handle<Image>>,
    /// Overrides the cutscene's seed.
    pub seed: Option<u64>,
    /// Entity that receives [`CutsceneFinished`] as an entity event (default: the player entity).
    pub target: Option<Entity>,
}

impl PlayCutscene {
    /// Plays `cutscene` with no variables.
    pub fn new(cutscene: Handle<Cutscene>) -> Self {
        Self {
            cutscene,
            variables: BTreeMap::new(),
            camera_image: None,
            seed: None,
            target: None,
        }
    }

    /// Builder: a `{name}` variable.
    pub fn with_variable(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.variables.insert(name.into(), value.into());
        self
    }

    /// Builder: the image for `camera: true` shots.
    pub fn with_camera_image(mut self, image: Handle<Image>) -> Self {
        self.camera_image = Some(image);
        self
    }

    /// Builder: entity that receives [`CutsceneFinished`].
    pub fn with_target(mut self, target: Entity) -> Self {
        self.target = Some(target);
        self
    }
}

/// Ends every playing skippable cutscene now.
#[derive(Message, Clone, Copy, Debug, Default, Reflect)]
#[reflect(Debug, Default)]
pub struct SkipCutscene;

/// A shot's first frame is on screen.
#[derive(Message, Clone, Debug, Reflect)]
#[reflect(Debug)]
pub struct CutsceneShotStarted {
    /// The player entity (fullscreen node).
    pub entity: Entity,
    /// The cutscene.
    pub cutscene: AssetId<Cutscene>,
    /// Shot index.
    pub shot: usize,
    /// Shot name, if it has one.
    pub name: Option<String>,
    /// Prompt weights of the shot (variables filled in).
    pub prompt: PromptWeights,
}

/// How a cutscene ended.
#[derive(Clone, Debug, PartialEq, Eq, Reflect)]
#[reflect(Debug, PartialEq)]
#[non_exhaustive]
pub enum CutsceneOutcome {
    /// Every shot played.
    Completed,
    /// [`SkipCutscene`] ended it.
    Skipped,
    /// It could not play (load error or timeout, missing variable, failed stream), and why.
    Failed(String),
}

/// A cutscene ended. Written as a message and triggered as an entity event on
/// [`PlayCutscene::target`] (or the player entity).
#[derive(Message, EntityEvent, Clone, Debug, Reflect)]
#[reflect(Debug)]
pub struct CutsceneFinished {
    /// The target entity.
    pub entity: Entity,
    /// The cutscene.
    pub cutscene: AssetId<Cutscene>,
    /// How it ended.
    pub outcome: CutsceneOutcome,
}

/// A cutscene file could not be loaded or reloaded.
#[derive(Message, Clone, Debug, Reflect)]
#[reflect(Debug)]
pub struct CutsceneFailed {
    /// The asset path, if known.
    pub path: Option<String>,
    /// Why.
    pub reason: String,
}

/// A shot ready to play.
#[derive(Clone, Debug, PartialEq)]
struct ResolvedShot {
    name: Option<String>,
    prompt: PromptWeights,
    chunks: u64,
    seed: Option<u64>,
    camera: bool,
    transition: Transition,
}

/// The playing cutscene on its fullscreen entity.
#[derive(Component, Debug)]
pub struct CutscenePlayer {
    request: PlayCutscene,
    shots: Vec<ResolvedShot>,
    /// Shot whose chunks are being generated.
    gen_shot: usize,
    /// Stream-relative chunk index where `gen_shot` began.
    shot_start_chunk: u64,
    /// The screen's consumed-frame count when the cutscene began.
    frames_base: u64,
    frames_per_chunk: u64,
    /// Shot whose frames are on screen.
    shown_shot: Option<usize>,
}

impl CutscenePlayer {
    /// The cutscene.
    pub fn cutscene(&self) -> &Handle<Cutscene> {
        &self.request.cutscene
    }

    /// Shot on screen now.
    pub fn shown_shot(&self) -> Option<usize> {
        self.shown_shot
    }

    /// Number of shots.
    pub fn shot_count(&self) -> usize {
        self.shots.len()
    }

    /// First frame (screen-relative) of each shot, and the end.
    fn frame_bounds(&self) -> Vec<u64> {
        let mut bounds = vec![self.frames_base];
        for s in &self.shots {
            let last = *bounds.last().unwrap_or(&0);
            bounds.push(last + s.chunks * self.frames_per_chunk);
        }
        bounds
    }
}

/// Requests waiting for their asset to load, with the real time each arrived.
#[derive(Resource, Debug, Default)]
pub struct PendingCutscenes(Vec<(PlayCutscene, Duration)>);

/// How long a request may wait for an asset that nothing is loading (a default handle, a removed asset)
/// before it fails: long enough for a game that adds the asset to `Assets<Cutscene>` a frame later.
const UNLOADED_GRACE: Duration = Duration::from_secs(1);

/// Why a request whose asset is not in `Assets<Cutscene>` cannot play (yet): `None` while it may still load.
fn load_failure(
    request: &PlayCutscene,
    waited: Duration,
    timeout: Duration,
    server: &AssetServer,
) -> Option<String> {
    let id = request.cutscene.id();
    let name = server
        .get_path(id)
        .map_or_else(|| format!("{id:?}"), |p| format!("`{p}`"));
    match server.get_load_state(id) {
        Some(LoadState::Failed(error)) => Some(format!("cutscene {name} failed to load: {error}")),
        Some(LoadState::NotLoaded | LoadState::Loading) if waited <= timeout => None,
        Some(LoadState::NotLoaded | LoadState::Loading) => Some(format!(
            "cutscene {name} was still loading after {:.0} s (HeliosSettings::cutscene_load_timeout)",
            timeout.as_secs_f64()
        )),
        // Loaded, then removed from `Assets`; or never given to the asset server at all.
        Some(LoadState::Loaded) | None if waited <= UNLOADED_GRACE => None,
        Some(LoadState::Loaded) | None => Some(format!(
            "cutscene {name} is not in Assets<Cutscene> and nothing is loading it (a default handle, or an \
             asset that was removed): load it with the AssetServer or add it to Assets<Cutscene>"
        )),
    }
}

fn resolve(
    cutscene: &Cutscene,
    request: &PlayCutscene,
    fps: f32,
    frames_per_chunk: usize,
) -> Result<Vec<ResolvedShot>, String> {
    (0..cutscene.shots.len())
        .map(|i| {
            let shot = &cutscene.shots[i];
            Ok(ResolvedShot {
                name: shot.name.clone(),
                prompt: cutscene.shot_prompt(i, &request.variables)?,
                chunks: shot.duration.chunks(fps, frames_per_chunk),
                seed: if i == 0 {
                    Some(request.seed.or(shot.seed).unwrap_or(cutscene.seed))
                } else {
                    shot.seed
                },
                camera: shot.camera,
                transition: shot.transition,
            })
        })
        .collect()
}

/// Ends a request that cannot play: `CutsceneFinished` with a `Failed` outcome, as a message and, when the
/// request named a target, as an entity event.
fn report_failure(
    request: &PlayCutscene,
    reason: String,
    commands: &mut Commands,
    finished: &mut MessageWriter<CutsceneFinished>,
) {
    let done = CutsceneFinished {
        entity: request.target.unwrap_or(Entity::PLACEHOLDER),
        cutscene: request.cutscene.id(),
        outcome: CutsceneOutcome::Failed(reason),
    };
    if request.target.is_some() {
        commands.trigger(done.clone());
    }
    finished.write(done);
}

/// Queues `PlayCutscene` requests; spawns the fullscreen player once the asset is loaded.
#[expect(
    clippy::too_many_arguments,
    reason = "requests, assets, load state and outputs"
)]
pub(crate) fn start(
    mut requests: MessageReader<PlayCutscene>,
    mut pending: ResMut<PendingCutscenes>,
    cutscenes: Res<Assets<Cutscene>>,
    server: Res<AssetServer>,
    settings: Res<HeliosSettings>,
    info: Option<Res<HeliosModelInfo>>,
    mut commands: Commands,
    mut finished: MessageWriter<CutsceneFinished>,
    time: Res<Time<Real>>,
    cost: Res<MainThreadCost>,
) {
    let _cost = cost.measure();
    let now = time.elapsed();
    pending
        .0
        .extend(requests.read().map(|request| (request.clone(), now)));
    if pending.0.is_empty() {
        return;
    }
    let fpc = info.as_ref().map_or(33, |i| i.frames_per_chunk);
    let mut waiting = Vec::new();
    for (request, since) in pending.0.drain(..) {
        let id = request.cutscene.id();
        let Some(cutscene) = cutscenes.get(id) else {
            let waited = now.saturating_sub(since);
            match load_failure(&request, waited, settings.cutscene_load_timeout, &server) {
                Some(reason) => {
                    tracing::error!("helios: {reason}");
                    report_failure(&request, reason, &mut commands, &mut finished);
                }
                None => waiting.push((request, since)),
            }
            continue;
        };
        let shots = match resolve(cutscene, &request, settings.playout_fps, fpc) {
            Ok(shots) => shots,
            Err(reason) => {
                tracing::error!("helios: cannot play cutscene: {reason}");
                report_failure(&request, reason, &mut commands, &mut finished);
                continue;
            }
        };
        let first = &shots[0];
        let mut screen = HeliosScreen::new(first.prompt.clone())
            .with_seed(first.seed.unwrap_or(0))
            .with_priority(StreamPriority::Cutscene);
        if first.camera {
            screen.image = request.camera_image.clone();
        }
        tracing::info!(
            "helios: playing cutscene {} ({} shots)",
            cutscene.name.as_deref().unwrap_or("(unnamed)"),
            shots.len()
        );
        commands.spawn((
            Name::new("helios cutscene"),
            Node {
                position_type: PositionType::Absolute,
                width: Val::Percent(100.0),
                height: Val::Percent(100.0),
                ..default()
            },
            ImageNode {
                image_mode: NodeImageMode::Stretch,
                ..default()
            },
            GlobalZIndex(i32::MAX - 1),
            screen,
            CutscenePlayer {
                request,
                shots,
                gen_shot: 0,
                shot_start_chunk: 0,
                frames_base: 0,
                frames_per_chunk: fpc as u64,
                shown_shot: None,
            },
        ));
    }
    pending.0 = waiting;
}

/// Moves each cutscene through its shots: sets the next shot's prompt at the chunk boundary, reports
/// shots as they show, and finishes at the end or on skip.
pub(crate) fn drive(
    mut players: Query<(
        Entity,
        &mut CutscenePlayer,
        &mut HeliosScreen,
        &mut HeliosStream,
        &HeliosStreamStats,
    )>,
    cutscenes: Res<Assets<Cutscene>>,
    mut skips: MessageReader<SkipCutscene>,
    mut started: MessageWriter<CutsceneShotStarted>,
    mut finished: MessageWriter<CutsceneFinished>,
    mut commands: Commands,
    cost: Res<MainThreadCost>,
) {
    let _cost = cost.measure();
    let skip = skips.read().count() > 0;
    for (entity, mut player, mut screen, mut stream, stats) in &mut players {
        let player = &mut *player;
        let id = player.request.cutscene.id();
        let target = player.request.target.unwrap_or(entity);
        let end = |outcome: CutsceneOutcome,
                   commands: &mut Commands,
                   finished: &mut MessageWriter<CutsceneFinished>| {
            let done = CutsceneFinished {
                entity: target,
                cutscene: id,
                outcome,
            };
            commands.trigger(done.clone());
            finished.write(done);
            commands.entity(entity).despawn();
        };
        let skippable = cutscenes.get(id).is_none_or(|c| c.skippable);
        if skip && skippable {
            end(CutsceneOutcome::Skipped, &mut commands, &mut finished);
            continue;
        }
        if let Some(error) = stream.failure() {
            end(
                CutsceneOutcome::Failed(error.to_string()),
                &mut commands,
                &mut finished,
            );
            continue;
        }
        if player.shots.is_empty() {
            end(
                CutsceneOutcome::Failed("no shots".into()),
                &mut commands,
                &mut finished,
            );
            continue;
        }

        // Generation side: never past the current shot; at its end, switch to the next shot.
        let shot_end = player.shot_start_chunk + player.shots[player.gen_shot].chunks;
        if stream.chunks_received() >= shot_end && player.gen_shot + 1 < player.shots.len() {
            player.gen_shot += 1;
            let next = player.shots[player.gen_shot].clone();
            match next.transition {
                Transition::Cut => {
                    if let Some(seed) = next.seed {
                        screen.seed = seed;
                    }
                    stream.request_restart();
                    player.shot_start_chunk = 0;
                }
                Transition::Crossfade(n) => {
                    screen.crossfade_chunks = Some(n);
                    player.shot_start_chunk = shot_end;
                }
            }
            screen.prompt = next.prompt.clone();
            let image = if next.camera {
                player.request.camera_image.clone()
            } else {
                None
            };
            if screen.image != image {
                screen.image = image;
            }
        }
        let limit = player.shot_start_chunk + player.shots[player.gen_shot].chunks;
        stream.set_chunk_limit(Some(limit));

        // Playout side: which shot's frames are showing.
        let bounds = player.frame_bounds();
        let consumed = stream.frames_consumed();
        let showing = (0..player.shots.len())
            .rev()
            .find(|&i| consumed > bounds[i]);
        if let Some(shot) = showing
            && player.shown_shot.is_none_or(|s| s < shot)
        {
            for s in player.shown_shot.map_or(0, |p| p + 1)..=shot {
                started.write(CutsceneShotStarted {
                    entity,
                    cutscene: id,
                    shot: s,
                    name: player.shots[s].name.clone(),
                    prompt: player.shots[s].prompt.clone(),
                });
            }
            player.shown_shot = Some(shot);
        }
        let total = *bounds.last().unwrap_or(&0);
        if consumed >= total && stats.state == StreamState::Waiting {
            end(CutsceneOutcome::Completed, &mut commands, &mut finished);
        }
    }
}

/// Hot reload and load failures: a modified cutscene re-resolves the players showing it (keeping
/// their place); a failed load becomes a [`CutsceneFailed`] message.
#[expect(
    clippy::too_many_arguments,
    reason = "asset events in, players and messages out"
)]
pub(crate) fn reload(
    mut events: MessageReader<AssetEvent<Cutscene>>,
    mut failures: MessageReader<AssetLoadFailedEvent<Cutscene>>,
    mut players: Query<&mut CutscenePlayer>,
    cutscenes: Res<Assets<Cutscene>>,
    server: Res<AssetServer>,
    settings: Res<HeliosSettings>,
    info: Option<Res<HeliosModelInfo>>,
    mut failed: MessageWriter<CutsceneFailed>,
    cost: Res<MainThreadCost>,
) {
    let _cost = cost.measure();
    for failure in failures.read() {
        let reason = failure.error.to_string();
        tracing::error!("helios: cutscene {} failed to load: {reason}", failure.path);
        failed.write(CutsceneFailed {
            path: Some(failure.path.to_string()),
            reason,
        });
    }
    let fpc = info.as_ref().map_or(33, |i| i.frames_per_chunk);
    for event in events.read() {
        let AssetEvent::Modified { id } = event else {
            continue;
        };
        let Some(cutscene) = cutscenes.get(*id) else {
            continue;
        };
        for mut player in &mut players {
            if player.request.cutscene.id() != *id {
                continue;
            }
            match resolve(cutscene, &player.request, settings.playout_fps, fpc) {
                // A cutscene changed in code to have no shots: keep playing what was resolved.
                Ok(shots) if shots.is_empty() => {
                    failed.write(CutsceneFailed {
                        path: server.get_path(*id).map(|p| p.to_string()),
                        reason: "the changed cutscene has no shots; kept the old ones".into(),
                    });
                }
                Ok(shots) => {
                    tracing::info!("helios: cutscene reloaded ({} shots)", shots.len());
                    player.gen_shot = player.gen_shot.min(shots.len() - 1);
                    player.shots = shots;
                }
                Err(reason) => {
                    tracing::error!("helios: cutscene reload: {reason}");
                    failed.write(CutsceneFailed {
                        path: server.get_path(*id).map(|p| p.to_string()),
                        reason,
                    });
                }
            }
        }
    }
}
