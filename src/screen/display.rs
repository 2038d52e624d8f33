//! What a screen looks like before and besides its video: the frame-sized image, the waiting and
//! "no signal" patterns, attaching the image to a material or UI node, and measuring whether (and how
//! large) the screen is on screen.

use bevy::asset::RenderAssetUsages;
use bevy::camera::primitives::Aabb;
use bevy::prelude::*;
use bevy::render::render_resource::{Extent3d, TextureDimension, TextureFormat};
use bevy::ui::ComputedNode;

use super::{HeliosScreen, HeliosStream, VisibilityTracking};
use crate::diagnostics::MainThreadCost;
use crate::settings::{HeliosSettings, VisibilitySource};

/// Size of images made before the model says its frame size.
pub(crate) const DEFAULT_SIZE: UVec2 = UVec2::new(64, 64);

/// A frame-sized image the CPU keeps (so frames can be moved in) and the GPU shows.
pub(crate) fn new_image(size: UVec2, rgba: Vec<u8>) -> Image {
    let mut image = Image::new_fill(
        Extent3d {
            width: size.x,
            height: size.y,
            depth_or_array_layers: 1,
        },
        TextureDimension::D2,
        &[0, 0, 0, 255],
        TextureFormat::Rgba8UnormSrgb,
        RenderAssetUsages::MAIN_WORLD | RenderAssetUsages::RENDER_WORLD,
    );
    image.data = Some(rgba);
    image
}

/// The waiting pattern: a dim blue-grey gradient.
pub(crate) fn placeholder_pixels(size: UVec2) -> Vec<u8> {
    let mut out = Vec::with_capacity((size.x * size.y * 4) as usize);
    for y in 0..size.y {
        for _ in 0..size.x {
            let v = (24 + 24 * y / size.y.max(1)) as u8;
            out.extend_from_slice(&[v, v, v + 12, 255]);
        }
    }
    out
}

/// The fallback image: "no signal" colour bars under dark diagonal stripes.
pub fn fallback_pixels(size: UVec2) -> Vec<u8> {
    const BARS: [[u8; 3]; 7] = [
        [192, 192, 192],
        [192, 192, 0],
        [0, 192, 192],
        [0, 192, 0],
        [192, 0, 192],
        [192, 0, 0],
        [0, 0, 192],
    ];
    let mut out = Vec::with_capacity((size.x * size.y * 4) as usize);
    for y in 0..size.y {
        for x in 0..size.x {
            let bar = BARS[(x * 7 / size.x.max(1)) as usize % 7];
            let stripe = ((x + y) / 6) % 2 == 0;
            let k = if stripe { 1 } else { 2 };
            out.extend_from_slice(&[bar[0] / k, bar[1] / k, bar[2] / k, 255]);
        }
    }
    out
}

/// Points a screen's material or UI node at its image.
pub(crate) fn attach(
    image: &Handle<Image>,
    material: Option<Mut<MeshMaterial3d<StandardMaterial>>>,
    node: Option<Mut<ImageNode>>,
    materials: Option<&mut Assets<StandardMaterial>>,
) {
    if let (Some(mut material), Some(materials)) = (material, materials) {
        // Each screen gets its own material, so screens sharing one don't show each other's video.
        let mut own = materials.get(&material.0).cloned().unwrap_or_default();
        // A display shows its pixels as they are: unlit, and emissive for bloom where HDR is on.
        own.unlit = true;
        own.base_color = Color::WHITE;
        own.base_color_texture = Some(image.clone());
        own.emissive = LinearRgba::WHITE;
        own.emissive_texture = Some(image.clone());
        material.0 = materials.add(own);
    }
    if let Some(mut node) = node
        && node.image != *image
    {
        node.image = image.clone();
    }
}

/// Screens whose material or UI node arrived after the screen component get attached too.
#[expect(
    clippy::type_complexity,
    reason = "screens whose display target was just added"
)]
pub(crate) fn attach_late(
    mut screens: Query<
        (
            &HeliosStream,
            Option<&mut MeshMaterial3d<StandardMaterial>>,
            Option<&mut ImageNode>,
        ),
        (
            With<HeliosScreen>,
            Or<(Added<MeshMaterial3d<StandardMaterial>>, Added<ImageNode>)>,
        ),
    >,
    mut materials: Option<ResMut<Assets<StandardMaterial>>>,
) {
    for (stream, material, node) in &mut screens {
        let material = material.filter(|m| {
            materials
                .as_ref()
                .and_then(|ms| ms.get(&m.0))
                .is_none_or(|mat| mat.base_color_texture.as_ref() != Some(&stream.image))
        });
        attach(&stream.image, material, node, materials.as_deref_mut());
    }
}

/// Decides which screens are on screen and how large they appear (for pausing and scheduling).
#[expect(
    clippy::type_complexity,
    reason = "one query over the optional visibility and size components"
)]
pub(crate) fn measure(
    mut screens: Query<(
        &mut HeliosStream,
        Option<&ViewVisibility>,
        Option<&InheritedVisibility>,
        Option<&ComputedNode>,
        Option<&GlobalTransform>,
        Option<&Aabb>,
    )>,
    cameras: Query<&GlobalTransform, With<Camera>>,
    settings: Res<HeliosSettings>,
    tracking: Res<VisibilityTracking>,
    cost: Res<MainThreadCost>,
) {
    let _cost = cost.measure();
    let read = match settings.visibility {
        VisibilitySource::Auto => tracking.0,
        VisibilitySource::Components => true,
        VisibilitySource::Ignore => false,
    };
    for (mut stream, view, inherited, node, transform, aabb) in &mut screens {
        let on_screen = !read
            || match node {
                Some(_) => inherited.is_none_or(|v| v.get()),
                None => view.is_none_or(|v| v.get()),
            };
        let size = if let Some(node) = node {
            (node.size().x * node.size().y / (1920.0 * 1080.0)).clamp(0.0, 1.0)
        } else if let (Some(t), Some(aabb)) = (transform, aabb) {
            let radius = (Vec3::from(aabb.half_extents) * t.scale()).length();
            let distance = cameras
                .iter()
                .map(|c| c.translation().distance(t.translation()))
                .fold(f32::INFINITY, f32::min);
            if distance.is_finite() {
                (radius / distance.max(1e-3)).clamp(0.0, 1.0)
            } else {
                0.5
            }
        } else {
            0.5
        };
        if stream.on_screen != on_screen {
            stream.on_screen = on_screen;
        }
        if (stream.apparent_size - size).abs() > 1e-3 {
            stream.apparent_size = size;
        }
    }
}
