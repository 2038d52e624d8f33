//! Shared helpers for the integration tests: fixture loading and tensor comparison.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped tiny model.
pub fn tiny_model_dir() -> PathBuf {
    root().join("models/helios-tiny")
}

/// A tensor from a fixture, widened to f64.
#[derive(Clone, Debug)]
pub struct FixtureTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

impl FixtureTensor {
    pub fn to_f32(&self) -> Vec<f32> {
        self.values.iter().map(|v| *v as f32).collect()
    }
}

/// Loads every tensor of a safetensors fixture (F32, F64, I64, U8).
pub fn load_fixture(
    path: &Path,
) -> Result<BTreeMap<String, FixtureTensor>, Box<dyn std::error::Error>> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("fixture {} unreadable: {e}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f64> = match view.dtype() {
            safetensors::Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            safetensors::Dtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::I64 => data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            safetensors::Dtype::U8 => data.iter().map(|b| *b as f64).collect(),
            other => {
                return Err(
                    format!("fixture tensor {name} has unsupported dtype {other:?}").into(),
                );
            }
        };
        out.insert(
            name,
            FixtureTensor {
                shape: view.shape().to_vec(),
                values,
            },
        );
    }
    Ok(out)
}

/// Max |a − b| and max |b|.
pub fn max_abs_diff(a: impl IntoIterator<Item = f64>, b: &[f64]) -> (f64, f64) {
    let mut err = 0f64;
    let mut scale = 0f64;
    for (x, y) in a.into_iter().zip(b) {
        err = err.max((x - y).abs());
        scale = scale.max(y.abs());
    }
    (err, scale)
}
