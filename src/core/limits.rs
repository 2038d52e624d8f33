//! Caps on every number that sizes memory or a loop, whether it comes from `manifest.ron`, a saved state or
//! a safetensors header. They are checked where the number enters ([`ModelManifest::validate`], restore,
//! weight loading), with checked arithmetic, so a damaged file is a typed error instead of an allocation
//! failure that aborts the game.
//!
//! The caps are far above any real model: the 14B model at 384x640 has 1.2 M elements of history and its
//! largest activation is below 2^28 elements.
//!
//! [`ModelManifest::validate`]: crate::core::manifest::ModelManifest::validate

use crate::error::HeliosError;

/// Elements of any single tensor the crate allocates or a graph declares (2^31: 8 GiB of f32).
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 31;

/// Elements of one stream's saved state: history ring plus anchor (2^28: 1 GiB of f32).
pub const MAX_STATE_ELEMENTS: u64 = 1 << 28;

/// `scheduler.num_train_timesteps` (1000 for Helios; each chunk builds grids of this length).
pub const MAX_TRAIN_TIMESTEPS: u32 = 100_000;

/// Pyramid stages (3 for Helios; stage grids halve per stage, so 8 already means a 128x smaller grid).
pub const MAX_STAGES: usize = 8;

/// Denoising steps of one stage (2 for Helios-Distilled; doubled on an amplified first chunk).
pub const MAX_STEPS_PER_STAGE: usize = 1_000;

/// VAE temporal and spatial factors (4 and 8 for Helios).
pub const MAX_VAE_FACTOR: usize = 64;

/// Tokens of a free-text prompt (`text_encoder.max_tokens`; 128 for all-MiniLM-L6-v2).
pub const MAX_TEXT_TOKENS: usize = 8_192;

/// The product of `dims`, without overflow (saturates at `u128::MAX`).
pub fn elements(dims: &[usize]) -> u128 {
    dims.iter()
        .try_fold(1u128, |acc, &d| acc.checked_mul(d as u128))
        .unwrap_or(u128::MAX)
}

/// The product of `dims` when it is at most `limit`, else [`HeliosError::AllocationTooLarge`] for `what`.
pub fn check_elements(what: &str, dims: &[usize], limit: u64) -> Result<usize, HeliosError> {
    let n = elements(dims);
    if n > u128::from(limit) {
        return Err(HeliosError::AllocationTooLarge {
            what: what.to_string(),
            elements: n,
            limit,
        });
    }
    // limit is at most u64::MAX and checked above; usize is 64 bits on every supported target
    usize::try_from(n).map_err(|_| HeliosError::AllocationTooLarge {
        what: what.to_string(),
        elements: n,
        limit: usize::MAX as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_never_overflow() {
        assert_eq!(elements(&[]), 1);
        assert_eq!(elements(&[2, 3, 4]), 24);
        assert_eq!(elements(&[usize::MAX, usize::MAX, 4]), u128::MAX);
        assert_eq!(check_elements("x", &[4, 4], 16).unwrap(), 16);
        let err = check_elements("history", &[usize::MAX, 2], MAX_TENSOR_ELEMENTS).unwrap_err();
        assert!(
            matches!(err, HeliosError::AllocationTooLarge { limit, .. } if limit == MAX_TENSOR_ELEMENTS),
            "{err}"
        );
    }
}
