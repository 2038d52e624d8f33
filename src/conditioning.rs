//! Game-state conditioning: a system that returns a [`Conditioning`] (prompt weights, optionally a
//! reference image) drives every screen matching a filter. Register it in one line:
//!
//! ```no_run
//! # use bevy::prelude::*;
//! # use bevy_helios::prelude::*;
//! #[derive(Resource)]
//! struct GameClock(f32);
//! #[derive(Component)]
//! struct Window;
//!
//! # let mut app = App::new();
//! app.add_helios_conditioning::<With<Window>, _>(|clock: Res<GameClock>| {
//!     Conditioning::new(PromptWeights::one("day").with("night", clock.0))
//! });
//! ```
//!
//! The system runs every frame in [`HeliosSystems::Conditioning`](crate::plugin::HeliosSystems); the
//! screen is only written when the output differs, and only changes travel to the worker, where they
//! apply from the very next generated chunk (blended over the screen's crossfade).

use bevy::ecs::query::QueryFilter;
use bevy::prelude::*;
use bevy::render::gpu_readback::{Readback, ReadbackComplete};
use bevy::render::render_resource::TextureFormat;

use crate::core::embedding::PromptWeights;
use crate::core::stream::StreamId;
use crate::diagnostics::MainThreadCost;
use crate::plugin::HeliosSystems;
use crate::screen::HeliosScreen;
use crate::worker::{ToWorker, WorkerOutbox};

/// What a screen should show: prompt weights and an optional reference image (image-to-video).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conditioning {
    /// Prompt weights over the model's bank.
    pub prompt: PromptWeights,
    /// Reference image, e.g. a camera's render target (read back from the GPU when needed).
    pub image: Option<Handle<Image>>,
}

impl Conditioning {
    /// Prompt weights only.
    pub fn new(prompt: PromptWeights) -> Self {
        Self {
            prompt,
            image: None,
        }
    }

    /// Builder: reference image.
    pub fn with_image(mut self, image: Handle<Image>) -> Self {
        self.image = Some(image);
        self
    }
}

/// Registers conditioning systems on an [`App`].
pub trait HeliosConditioningExt {
    /// Runs `system` every frame and applies its [`Conditioning`] to every [`HeliosScreen`] matching
    /// the query filter `F` (e.g. `With<WindowScreen>`).
    fn add_helios_conditioning<F: QueryFilter + 'static, M>(
        &mut self,
        system: impl IntoSystem<(), Conditioning, M> + 'static,
    ) -> &mut Self;
}

impl HeliosConditioningExt for App {
    fn add_helios_conditioning<F: QueryFilter + 'static, M>(
        &mut self,
        system: impl IntoSystem<(), Conditioning, M> + 'static,
    ) -> &mut Self {
        self.add_systems(
            Update,
            system
                .pipe(apply_conditioning::<F>)
                .in_set(HeliosSystems::Conditioning),
        )
    }
}

/// Writes a conditioning output into the matching screens, touching only fields that differ (so
/// change detection fires only on real changes).
pub fn apply_conditioning<F: QueryFilter>(
    In(conditioning): In<Conditioning>,
    mut screens: Query<&mut HeliosScreen, F>,
    cost: Res<MainThreadCost>,
) {
    let _cost = cost.measure();
    for mut screen in &mut screens {
        if screen.prompt != conditioning.prompt {
            screen.prompt = conditioning.prompt.clone();
        }
        if screen.image != conditioning.image {
            screen.image = conditioning.image.clone();
        }
    }
}

/// A reference image as the dispatcher finds it.
pub(crate) enum ReferenceImage {
    /// CPU pixels, RGBA8.
    Ready {
        rgba: Vec<u8>,
        width: u32,
        height: u32,
    },
    /// Only on the GPU (a render target): read it back.
    OnGpu,
    /// Not loaded yet.
    Missing,
}

/// Looks up a reference image's pixels.
pub(crate) fn reference_pixels(images: &Assets<Image>, handle: &Handle<Image>) -> ReferenceImage {
    let Some(image) = images.get(handle) else {
        return ReferenceImage::Missing;
    };
    let (width, height) = (image.width(), image.height());
    match (&image.data, image.texture_descriptor.format) {
        (None, _) => ReferenceImage::OnGpu,
        (Some(data), TextureFormat::Rgba8Unorm | TextureFormat::Rgba8UnormSrgb) => {
            ReferenceImage::Ready {
                rgba: data.clone(),
                width,
                height,
            }
        }
        (Some(_), _) => match image.clone().try_into_dynamic() {
            Ok(dynamic) => ReferenceImage::Ready {
                rgba: dynamic.to_rgba8().into_raw(),
                width,
                height,
            },
            Err(e) => {
                tracing::warn!("helios: reference image format unsupported: {e}");
                ReferenceImage::Missing
            }
        },
    }
}

/// Asks the render world for a GPU image's pixels; they go to the worker when they arrive.
pub(crate) fn request_readback(commands: &mut Commands, stream: StreamId, handle: Handle<Image>) {
    commands
        .spawn((
            Readback::texture(handle.clone()),
            Name::new("helios reference readback"),
        ))
        .observe(
            move |done: On<ReadbackComplete>,
                  images: Res<Assets<Image>>,
                  mut outbox: ResMut<WorkerOutbox>,
                  mut commands: Commands| {
                if let Some(image) = images.get(&handle) {
                    let (width, height) = (image.width(), image.height());
                    let format = image.texture_descriptor.format;
                    if let Some(rgba) = unpad_rows(&done.data, width, height, format) {
                        outbox.push(ToWorker::ConditionImage {
                            stream,
                            rgba,
                            width,
                            height,
                        });
                    }
                }
                commands.entity(done.entity).despawn();
            },
        );
}

/// GPU readbacks pad rows to 256 bytes; strips that, and swaps BGRA to RGBA.
fn unpad_rows(data: &[u8], width: u32, height: u32, format: TextureFormat) -> Option<Vec<u8>> {
    let row = width as usize * 4;
    let padded = row.div_ceil(256) * 256;
    let rows: Vec<&[u8]> = if data.len() == row * height as usize {
        data.chunks_exact(row).collect()
    } else if data.len() >= padded * height as usize {
        data.chunks_exact(padded)
            .take(height as usize)
            .map(|r| &r[..row])
            .collect()
    } else {
        tracing::warn!(
            "helios: readback of {} bytes does not fit {width}x{height}",
            data.len()
        );
        return None;
    };
    let bgra = matches!(
        format,
        TextureFormat::Bgra8Unorm | TextureFormat::Bgra8UnormSrgb
    );
    let mut out = Vec::with_capacity(row * height as usize);
    for r in rows {
        if bgra {
            for px in r.chunks_exact(4) {
                out.extend_from_slice(&[px[2], px[1], px[0], px[3]]);
            }
        } else {
            out.extend_from_slice(r);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readback_rows_are_unpadded_and_swizzled() {
        let (w, h) = (3u32, 2u32);
        let mut data = vec![0u8; 256 * 2];
        data[0..4].copy_from_slice(&[1, 2, 3, 4]);
        data[256..260].copy_from_slice(&[5, 6, 7, 8]);
        let out = unpad_rows(&data, w, h, TextureFormat::Bgra8UnormSrgb).expect("fits");
        assert_eq!(out.len(), 24, "3x2 RGBA without padding");
        assert_eq!(&out[0..4], &[3, 2, 1, 4], "BGRA swapped to RGBA");
        assert_eq!(
            &out[12..16],
            &[7, 6, 5, 8],
            "second row starts after the padding"
        );
    }
}
