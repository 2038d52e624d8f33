//! The multi-term history memory: a fixed ring of the last `long + mid + 1` latent frames plus the
//! first-frame anchor (diffusers 0.42.1 `HeliosPyramidPipeline.__call__`, steps 5-6).

use ndarray::{Array4, Array5, ArrayView4, Axis, s};
use serde::{Deserialize, Serialize};

use crate::core::limits::{MAX_STATE_ELEMENTS, check_elements};
use crate::error::HeliosError;

/// The three history terms as the transformer takes them, `[1, C, T, h, w]` each.
#[derive(Clone, Debug)]
pub struct HistoryTerms {
    /// Anchor frame then the newest frame (2 frames).
    pub short: Array5<f32>,
    /// The two frames before the newest.
    pub mid: Array5<f32>,
    /// The `long` frames before those.
    pub long: Array5<f32>,
}

/// A fixed ring of latent frames `[C, len, h, w]`, oldest first from `head`.
///
/// Starts as zeros, as the reference's zero-initialised buffer; pushing a chunk overwrites the oldest
/// frames, so memory never grows however long a stream runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryRing {
    sizes: [usize; 3],
    channels: usize,
    height: usize,
    width: usize,
    /// Frame-major storage: frame f occupies `[f·C·h·w, (f+1)·C·h·w)`, channel-major inside.
    frames: Vec<f32>,
    /// Index of the oldest frame.
    head: usize,
    /// The first-frame anchor `[C, 1, h, w]`, once known.
    anchor: Option<Vec<f32>>,
}

impl HistoryRing {
    /// An all-zero ring for `sizes = [long, mid, 1]`.
    ///
    /// Panics if the ring does not fit in memory; [`Self::try_new`] returns an error instead.
    pub fn new(sizes: [usize; 3], channels: usize, height: usize, width: usize) -> Self {
        let len: usize = sizes.iter().sum();
        Self {
            sizes,
            channels,
            height,
            width,
            frames: vec![0.0; len * channels * height * width],
            head: 0,
            anchor: None,
        }
    }

    /// [`Self::new`], refusing rings (plus anchor) above [`MAX_STATE_ELEMENTS`] with
    /// [`HeliosError::AllocationTooLarge`] before allocating.
    pub fn try_new(
        sizes: [usize; 3],
        channels: usize,
        height: usize,
        width: usize,
    ) -> Result<Self, HeliosError> {
        let frames = sizes
            .iter()
            .try_fold(1usize, |a, b| a.checked_add(*b))
            .unwrap_or(usize::MAX);
        check_elements(
            "history ring and anchor",
            &[frames, channels, height, width],
            MAX_STATE_ELEMENTS,
        )?;
        if sizes[2] != 1 {
            return Err(HeliosError::Unsupported {
                what: format!("history sizes {sizes:?} (the newest term must be one frame)"),
            });
        }
        Ok(Self::new(sizes, channels, height, width))
    }

    /// Checks a ring that came from outside (a saved state) against the layout a model expects:
    /// sizes and grid, storage length, head inside the ring, anchor length. O(1); these are what the ring's
    /// indexing relies on. [`HeliosError::StateInvalid`] names the field.
    pub fn check_layout(
        &self,
        sizes: [usize; 3],
        channels: usize,
        height: usize,
        width: usize,
    ) -> Result<(), HeliosError> {
        if self.sizes != sizes {
            return Err(HeliosError::state(
                "history.sizes",
                format!("{:?}, the model has {sizes:?}", self.sizes),
            ));
        }
        if (self.channels, self.height, self.width) != (channels, height, width) {
            return Err(HeliosError::state(
                "history.channels",
                format!(
                    "[{}, {}, {}] latents, the model has [{channels}, {height}, {width}]",
                    self.channels, self.height, self.width
                ),
            ));
        }
        // the model's layout passed the caps, so these products cannot overflow
        let (len, fs) = (self.len(), self.frame_size());
        if self.frames.len() != len * fs {
            return Err(HeliosError::state(
                "history.frames",
                format!(
                    "{} values, {len} frames need {}",
                    self.frames.len(),
                    len * fs
                ),
            ));
        }
        if self.head >= len {
            return Err(HeliosError::state(
                "history.head",
                format!("{} is outside the ring of {len} frames", self.head),
            ));
        }
        if let Some(anchor) = &self.anchor
            && anchor.len() != fs
        {
            return Err(HeliosError::state(
                "history.anchor",
                format!("{} values, one frame is {fs}", anchor.len()),
            ));
        }
        Ok(())
    }

    /// Checks every stored value is finite (a damaged save would otherwise surface as the model producing
    /// NaN). O(ring size); run on restore.
    pub fn check_values(&self) -> Result<(), HeliosError> {
        let bad = |v: &&f32| !v.is_finite();
        if let Some(i) = self.frames.iter().position(|v| !v.is_finite()) {
            return Err(HeliosError::state(
                "history.frames",
                format!("value {i} is {}", self.frames[i]),
            ));
        }
        if let Some(n) = self.anchor.as_ref().map(|a| a.iter().filter(bad).count())
            && n > 0
        {
            return Err(HeliosError::state(
                "history.anchor",
                format!("{n} values are not finite"),
            ));
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.sizes.iter().sum()
    }

    fn frame_size(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Appends the frames of `latents` (`[C, T, h, w]`), dropping the oldest.
    pub fn push(&mut self, latents: ArrayView4<f32>) -> Result<(), HeliosError> {
        let (c, t, h, w) = latents.dim();
        if (c, h, w) != (self.channels, self.height, self.width) {
            return Err(HeliosError::ShapeMismatch {
                what: "latents appended to history".into(),
                expected: vec![self.channels, t, self.height, self.width],
                actual: vec![c, t, h, w],
            });
        }
        let fs = self.frame_size();
        let len = self.len();
        // only the newest `len` frames survive
        let skip = t.saturating_sub(len);
        for f in skip..t {
            let slot = self.head;
            let frame = latents.index_axis(Axis(1), f);
            for (dst, src) in self.frames[slot * fs..(slot + 1) * fs]
                .iter_mut()
                .zip(frame.iter())
            {
                *dst = *src;
            }
            self.head = (self.head + 1) % len;
        }
        Ok(())
    }

    /// Replaces the newest frame (I2V puts the image's "fake" latent there).
    pub fn set_newest(&mut self, frame: ArrayView4<f32>) -> Result<(), HeliosError> {
        let len = self.len();
        let newest = (self.head + len - 1) % len;
        let fs = self.frame_size();
        if frame.len() != fs {
            return Err(HeliosError::ShapeMismatch {
                what: "newest history frame".into(),
                expected: vec![self.channels, 1, self.height, self.width],
                actual: frame.shape().to_vec(),
            });
        }
        for (dst, src) in self.frames[newest * fs..(newest + 1) * fs]
            .iter_mut()
            .zip(frame.iter())
        {
            *dst = *src;
        }
        Ok(())
    }

    /// The whole window in time order, `[C, len, h, w]`.
    pub fn window(&self) -> Array4<f32> {
        let len = self.len();
        let fs = self.frame_size();
        let mut out = Array4::<f32>::zeros((self.channels, len, self.height, self.width));
        for f in 0..len {
            let slot = (self.head + f) % len;
            let src = &self.frames[slot * fs..(slot + 1) * fs];
            let mut dst = out.index_axis_mut(Axis(1), f);
            for (d, s) in dst.iter_mut().zip(src) {
                *d = *s;
            }
        }
        out
    }

    /// Writes the whole window in time order (`[C, len, h, w]`, as [`Self::window`]) into `out` without
    /// allocating; `out.len()` must be `C·len·h·w`.
    pub fn write_window(&self, out: &mut [f32]) -> Result<(), HeliosError> {
        let (len, fs, plane) = (self.len(), self.frame_size(), self.height * self.width);
        if out.len() != len * fs {
            return Err(HeliosError::ShapeMismatch {
                what: "history window buffer".into(),
                expected: vec![self.channels, len, self.height, self.width],
                actual: vec![out.len()],
            });
        }
        for f in 0..len {
            let slot = (self.head + f) % len;
            let frame = &self.frames[slot * fs..(slot + 1) * fs];
            for c in 0..self.channels {
                let dst = (c * len + f) * plane;
                out[dst..dst + plane].copy_from_slice(&frame[c * plane..(c + 1) * plane]);
            }
        }
        Ok(())
    }

    /// `(C, len, h, w)` of the window.
    pub fn dims(&self) -> (usize, usize, usize, usize) {
        (self.channels, self.len(), self.height, self.width)
    }

    /// The anchor `[C, 1, h, w]` as a flat slice, once set.
    pub fn anchor(&self) -> Option<&[f32]> {
        self.anchor.as_deref()
    }

    /// Becomes a copy of `other`, reusing this ring's storage when the sizes agree.
    pub fn copy_from(&mut self, other: &HistoryRing) {
        self.sizes = other.sizes;
        self.channels = other.channels;
        self.height = other.height;
        self.width = other.width;
        self.head = other.head;
        self.frames.clone_from(&other.frames);
        match (&mut self.anchor, &other.anchor) {
            (Some(mine), Some(theirs)) => mine.clone_from(theirs),
            (mine, theirs) => *mine = theirs.clone(),
        }
    }

    /// Sets the first-frame anchor `[C, 1, h, w]`.
    pub fn set_anchor(&mut self, anchor: ArrayView4<f32>) -> Result<(), HeliosError> {
        if anchor.len() != self.frame_size() {
            return Err(HeliosError::ShapeMismatch {
                what: "anchor latent".into(),
                expected: vec![self.channels, 1, self.height, self.width],
                actual: anchor.shape().to_vec(),
            });
        }
        self.anchor = Some(anchor.iter().copied().collect());
        Ok(())
    }

    /// Whether an anchor was set.
    pub fn has_anchor(&self) -> bool {
        self.anchor.is_some()
    }

    /// The transformer's history inputs: long | mid | (anchor, newest).
    pub fn terms(&self) -> HistoryTerms {
        let win = self.window();
        let [long, mid, _] = self.sizes;
        let (c, h, w) = (self.channels, self.height, self.width);
        let to5 = |a: Array4<f32>| a.insert_axis(Axis(0));
        let long_t = to5(win.slice(s![.., 0..long, .., ..]).to_owned());
        let mid_t = to5(win.slice(s![.., long..long + mid, .., ..]).to_owned());
        let mut short = Array4::<f32>::zeros((c, 2, h, w));
        if let Some(anchor) = &self.anchor {
            let a =
                ArrayView4::from_shape((c, 1, h, w), anchor).expect("anchor size checked on set");
            short.slice_mut(s![.., 0..1, .., ..]).assign(&a);
        }
        short
            .slice_mut(s![.., 1..2, .., ..])
            .assign(&win.slice(s![.., long + mid.., .., ..]));
        HistoryTerms {
            short: to5(short),
            mid: mid_t,
            long: long_t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(c: usize, t: usize, start: f32) -> Array4<f32> {
        Array4::from_shape_fn((c, t, 1, 1), |(_, f, _, _)| start + f as f32)
    }

    #[test]
    fn ring_keeps_the_newest_frames_in_order() {
        let mut ring = HistoryRing::new([16, 2, 1], 2, 1, 1);
        ring.push(chunk(2, 9, 1.0).view()).unwrap();
        // 10 zeros then 1..9, as the reference's chunk 1 window
        let w = ring.window();
        assert_eq!(w[[0, 9, 0, 0]], 0.0);
        assert_eq!(w[[1, 10, 0, 0]], 1.0);
        assert_eq!(w[[0, 18, 0, 0]], 9.0);
        ring.push(chunk(2, 9, 10.0).view()).unwrap();
        ring.push(chunk(2, 9, 19.0).view()).unwrap();
        let w = ring.window();
        assert_eq!(
            w[[0, 0, 0, 0]],
            9.0,
            "oldest kept frame after 27 pushes is #9"
        );
        assert_eq!(w[[0, 18, 0, 0]], 27.0);
    }

    #[test]
    fn terms_split_long_mid_short_with_anchor() {
        let mut ring = HistoryRing::new([16, 2, 1], 1, 1, 1);
        ring.push(chunk(1, 19, 1.0).view()).unwrap();
        ring.set_anchor(Array4::from_elem((1, 1, 1, 1), -5.0).view())
            .unwrap();
        let t = ring.terms();
        assert_eq!(t.long.shape(), &[1, 1, 16, 1, 1]);
        assert_eq!(t.long[[0, 0, 0, 0, 0]], 1.0);
        assert_eq!(t.mid[[0, 0, 1, 0, 0]], 18.0);
        assert_eq!(
            t.short[[0, 0, 0, 0, 0]],
            -5.0,
            "short starts with the anchor"
        );
        assert_eq!(t.short[[0, 0, 1, 0, 0]], 19.0, "then the newest frame");
    }

    #[test]
    fn write_window_matches_window_and_copy_from_is_equal() {
        let mut ring = HistoryRing::new([16, 2, 1], 3, 2, 2);
        ring.push(
            Array4::from_shape_fn((3, 9, 2, 2), |(c, f, i, j)| {
                (c * 1000 + f * 10 + i * 2 + j) as f32
            })
            .view(),
        )
        .unwrap();
        ring.push(chunk(3, 9, 50.0).broadcast((3, 9, 2, 2)).unwrap().view())
            .unwrap();
        let mut flat = vec![0f32; 3 * 19 * 4];
        ring.write_window(&mut flat).unwrap();
        assert_eq!(
            flat,
            ring.window().iter().copied().collect::<Vec<_>>(),
            "write_window must lay frames out as window() does"
        );
        assert!(ring.write_window(&mut flat[1..]).is_err());
        let mut other = HistoryRing::new([16, 2, 1], 3, 2, 2);
        other.copy_from(&ring);
        assert_eq!(other, ring, "copy_from must give an equal ring");
    }

    #[test]
    fn layout_checks_catch_damaged_rings() {
        let good = HistoryRing::new([16, 2, 1], 2, 1, 1);
        good.check_layout([16, 2, 1], 2, 1, 1).unwrap();
        let field = |r: &HistoryRing| match r.check_layout([16, 2, 1], 2, 1, 1) {
            Err(HeliosError::StateInvalid { field, .. }) => field,
            other => panic!("expected StateInvalid, got {other:?}"),
        };
        let mut r = good.clone();
        r.head = 19;
        assert_eq!(field(&r), "history.head");
        let mut r = good.clone();
        r.frames.pop();
        assert_eq!(field(&r), "history.frames");
        let mut r = good.clone();
        r.anchor = Some(vec![0.0]);
        assert_eq!(field(&r), "history.anchor");
        let mut r = good.clone();
        r.sizes = [usize::MAX, 2, 1];
        assert_eq!(field(&r), "history.sizes");
        let mut r = good;
        r.frames[3] = f32::NAN;
        assert!(r.check_values().is_err());
        assert!(matches!(
            HistoryRing::try_new([usize::MAX, 2, 1], 16, 8, 8),
            Err(HeliosError::AllocationTooLarge { .. })
        ));
    }

    #[test]
    fn push_rejects_wrong_shape() {
        let mut ring = HistoryRing::new([16, 2, 1], 2, 4, 4);
        assert!(ring.push(chunk(2, 9, 0.0).view()).is_err());
    }
}
