//! The Helios inspector (feature `inspector`): an egui window with the model status, per-stream
//! metrics (FPS, chunk latency, queue depth, first-frame latency, dropped/held frames), the plugin's
//! main-thread cost, and live controls per screen: prompt-weight sliders, a free-text prompt field (models
//! with a text encoder), seed, pause/resume, and recording to PNG frames or a GIF. Toggle it with F2 (see
//! [`HeliosInspector`]).

use std::collections::HashMap;
use std::path::PathBuf;

use bevy::diagnostic::{DiagnosticPath, DiagnosticsStore};
use bevy::prelude::*;
use bevy_egui::input::EguiWantsInput;
use bevy_egui::{EguiContexts, EguiPlugin, EguiPrimaryContextPass, egui};

use crate::core::embedding::PromptWeights;
use crate::diagnostics::{MAIN_THREAD_MS, SEND_RETRIES};
use crate::recorder::{RecordFormat, ScreenRecorder};
use crate::screen::{HeliosScreen, HeliosStream, HeliosStreamStats};
use crate::status::{HeliosModelInfo, HeliosStatus};

/// Adds the inspector window (and `EguiPlugin` if it is missing).
#[derive(Default)]
pub struct HeliosInspectorPlugin {
    /// Open at start.
    pub open: bool,
}

/// Inspector state and options.
#[derive(Resource, Clone, Debug)]
pub struct HeliosInspector {
    /// Whether the window shows.
    pub open: bool,
    /// Key that toggles the window.
    pub toggle_key: KeyCode,
    /// Where recordings go (one sub-directory or file per recording).
    pub record_dir: PathBuf,
    recordings: u32,
    /// Free-text prompt being typed, per screen.
    drafts: HashMap<Entity, String>,
}

impl Default for HeliosInspector {
    fn default() -> Self {
        Self {
            open: false,
            toggle_key: KeyCode::F2,
            record_dir: PathBuf::from("recordings"),
            recordings: 0,
            drafts: HashMap::new(),
        }
    }
}

impl Plugin for HeliosInspectorPlugin {
    fn build(&self, app: &mut App) {
        if !app.is_plugin_added::<EguiPlugin>() {
            app.add_plugins(EguiPlugin::default());
        }
        app.insert_resource(HeliosInspector {
            open: self.open,
            ..default()
        })
        .add_systems(Update, toggle)
        .add_systems(
            EguiPrimaryContextPass,
            draw.run_if(|i: Res<HeliosInspector>| i.open),
        );
    }
}

/// Toggles the window, unless egui is typing into a field.
fn toggle(
    keys: Option<Res<ButtonInput<KeyCode>>>,
    wants: Option<Res<EguiWantsInput>>,
    mut inspector: ResMut<HeliosInspector>,
) {
    let Some(keys) = keys else { return };
    if wants.is_some_and(|w| w.wants_keyboard_input()) {
        return;
    }
    if keys.just_pressed(inspector.toggle_key) {
        inspector.open = !inspector.open;
    }
}

fn ms(d: Option<std::time::Duration>) -> String {
    d.map_or("-".into(), |d| {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    })
}

/// Draws the window.
#[expect(
    clippy::too_many_arguments,
    reason = "status, metrics and every screen"
)]
#[expect(
    clippy::type_complexity,
    reason = "every screen with its optional recorder"
)]
fn draw(
    mut contexts: EguiContexts,
    status: Res<HeliosStatus>,
    info: Option<Res<HeliosModelInfo>>,
    store: Option<Res<DiagnosticsStore>>,
    mut inspector: ResMut<HeliosInspector>,
    mut screens: Query<(
        Entity,
        Option<&Name>,
        &mut HeliosScreen,
        &HeliosStream,
        &HeliosStreamStats,
        Option<&mut ScreenRecorder>,
    )>,
    mut commands: Commands,
    settings: Res<crate::settings::HeliosSettings>,
) {
    let Ok(ctx) = contexts.ctx_mut() else { return };
    let value = |path: &DiagnosticPath| {
        store
            .as_ref()
            .and_then(|s| s.get(path))
            .and_then(|d| d.smoothed())
            .unwrap_or(0.0)
    };
    let mut open = inspector.open;
    egui::Window::new("Helios")
        .open(&mut open)
        .default_width(340.0)
        .show(ctx, |ui| {
            match &*status {
                HeliosStatus::Loading { stage, progress } => {
                    ui.label(format!("Loading: {stage}"));
                    ui.add(egui::ProgressBar::new(*progress));
                }
                HeliosStatus::Ready { provider, .. } => {
                    ui.label(format!("Ready on {}", provider.active));
                }
                HeliosStatus::Degraded {
                    provider, reason, ..
                } => {
                    ui.colored_label(
                        egui::Color32::YELLOW,
                        format!("Degraded on {}: {reason}", provider.active),
                    );
                }
                HeliosStatus::Failed(e) => {
                    ui.colored_label(egui::Color32::RED, format!("Failed: {e}"));
                }
                HeliosStatus::Starting => {
                    ui.label("Starting");
                }
            }
            if let Some(provider) = status.provider() {
                for (name, reason) in &provider.skipped {
                    ui.small(format!("{name} skipped: {reason}"));
                }
            }
            if let Some(capacity) = status.capacity() {
                ui.label(format!(
                    "generator: {:.1} frames/s = {:.2} screens at full rate",
                    capacity.generated_fps, capacity.full_rate_streams
                ));
            }
            ui.label(format!(
                "main thread: {:.3} ms/frame   send retries: {:.0}   playout {} fps",
                value(&MAIN_THREAD_MS),
                value(&SEND_RETRIES),
                settings.playout_fps
            ));
            ui.separator();
            for (entity, name, mut screen, stream, stats, recorder) in &mut screens {
                let title = match (name, stream.stream_id()) {
                    (Some(n), Some(id)) => format!("{n} (stream {})", id.0),
                    (Some(n), None) => n.to_string(),
                    (None, Some(id)) => format!("{entity} (stream {})", id.0),
                    (None, None) => format!("{entity}"),
                };
                egui::CollapsingHeader::new(title)
                    .default_open(true)
                    .show(ui, |ui| {
                        ui.label(format!(
                            "{:?}  shown {:.1} fps  playing at {:.1}  generated {:.1} (share {:.1})",
                            stats.state,
                            stats.fps,
                            stats.playout_fps,
                            stats.generated_fps,
                            stats.share_fps
                        ));
                        ui.label(format!(
                            "chunk {:.0} ms  queue {} frames  frozen {:.1} s (longest {:.1} s)",
                            stats.chunk_latency * 1000.0,
                            stats.queue_depth,
                            stats.frozen.as_secs_f32(),
                            stats.longest_freeze.as_secs_f32()
                        ));
                        ui.label(format!(
                            "first frame {}  shown {}  dropped {}  held {}  chunks {}",
                            ms(stats.first_frame_latency),
                            stats.frames_shown,
                            stats.frames_dropped,
                            stats.frames_held,
                            stats.chunks
                        ));
                        // Edit copies and write back only real changes, so change detection stays honest.
                        let mut paused = screen.paused;
                        let mut seed = screen.seed;
                        let mut prompt = screen.prompt.clone();
                        ui.horizontal(|ui| {
                            ui.checkbox(&mut paused, "paused");
                            ui.label("seed");
                            ui.add(egui::DragValue::new(&mut seed));
                        });
                        let mut remove = None;
                        for (name, weight) in prompt.0.iter_mut() {
                            ui.horizontal(|ui| {
                                ui.add(egui::Slider::new(weight, 0.0..=1.0).text(name.as_str()));
                                if ui.small_button("x").clicked() {
                                    remove = Some(name.clone());
                                }
                            });
                        }
                        if let Some(name) = remove
                            && prompt.0.len() > 1
                        {
                            prompt.0.remove(&name);
                        }
                        if let Some(info) = &info {
                            let candidates: Vec<&String> = info
                                .prompts
                                .iter()
                                .filter(|n| !prompt.0.contains_key(*n))
                                .collect();
                            egui::ComboBox::from_id_salt(("helios_add_prompt", entity))
                                .selected_text("add prompt")
                                .show_ui(ui, |ui| {
                                    for n in candidates {
                                        if ui.button(n.as_str()).clicked() {
                                            prompt.0.insert(n.clone(), 0.5);
                                        }
                                    }
                                });
                            if info.free_text {
                                free_text_field(
                                    ui,
                                    inspector.drafts.entry(entity).or_default(),
                                    &mut prompt,
                                );
                            }
                        }
                        if paused != screen.paused {
                            screen.paused = paused;
                        }
                        if seed != screen.seed {
                            screen.seed = seed;
                        }
                        if prompt != screen.prompt && prompt.0.values().any(|w| *w > 0.0) {
                            screen.prompt = prompt;
                        }
                        // Stop lets the writer finish in the background (removing the recorder would
                        // wait for it); a finished recorder is replaced by the next recording.
                        ui.horizontal(|ui| match recorder {
                            Some(mut rec) if !rec.is_stopped() || !rec.is_finished() => {
                                let state = if rec.is_stopped() {
                                    "finishing"
                                } else {
                                    "recording"
                                };
                                ui.label(format!(
                                    "{state}: {} frames ({} dropped)",
                                    rec.frames(),
                                    rec.dropped()
                                ));
                                if !rec.is_stopped() && ui.button("stop").clicked() {
                                    rec.stop();
                                }
                            }
                            _ => {
                                let id = stream.stream_id().map_or(0, |s| s.0);
                                if ui.button("record PNG").clicked() {
                                    inspector.recordings += 1;
                                    let dir = inspector
                                        .record_dir
                                        .join(format!("stream{id}_{}", inspector.recordings));
                                    commands.entity(entity).insert(ScreenRecorder::start(
                                        RecordFormat::PngFrames(dir),
                                    ));
                                }
                                if ui.button("record GIF").clicked() {
                                    inspector.recordings += 1;
                                    let path = inspector
                                        .record_dir
                                        .join(format!("stream{id}_{}.gif", inspector.recordings));
                                    let fps = settings.playout_fps;
                                    commands.entity(entity).insert(ScreenRecorder::start(
                                        RecordFormat::Gif { path, fps },
                                    ));
                                }
                            }
                        });
                    });
            }
        });
    if open != inspector.open {
        inspector.open = open;
    }
    // forget drafts of screens that are gone
    if inspector.drafts.len() > screens.iter().len() {
        inspector.drafts.retain(|e, _| screens.contains(*e));
    }
}

/// A line to type any prompt into: "set" replaces the screen's prompt with it, "blend" adds it at 0.5
/// (Enter sets). The worker embeds it with the model's text encoder.
fn free_text_field(ui: &mut egui::Ui, draft: &mut String, prompt: &mut PromptWeights) {
    ui.horizontal(|ui| {
        let field = ui.add(
            egui::TextEdit::singleline(draft)
                .hint_text("free-text prompt")
                .desired_width(180.0),
        );
        let entered = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        let text = draft.trim().to_string();
        let ready = !text.is_empty();
        let set = ui.add_enabled(ready, egui::Button::new("set")).clicked();
        let blend = ui.add_enabled(ready, egui::Button::new("blend")).clicked();
        if ready && (set || entered) {
            *prompt = PromptWeights::one(text);
            draft.clear();
        } else if ready && blend {
            prompt.0.insert(text, 0.5);
            draft.clear();
        }
    });
}
