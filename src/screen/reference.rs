//! Image-to-video references: a screen's [`HeliosScreen::image`](super::HeliosScreen::image) as RGBA8
//! pixels for the worker, read back from the GPU when the image lives only there (a render target).

use bevy::prelude::*;
use bevy::render::gpu_readback::{Readback, ReadbackComplete};
use bevy::render::render_resource::TextureFormat;

use crate::core::stream::StreamId;
use crate::worker::{ToWorker, WorkerOutbox};

/// A reference image as the screen finds it.
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
