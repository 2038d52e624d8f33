//! Building TensorRT engines ahead of time, so that a game never builds them while loading.
//!
//! TensorRT compiles every graph into an engine for the exact GPU, which takes minutes for the real model.
//! [`prepare`] (the `prepare` example) creates every session of a model directory on the chain's TensorRT
//! provider with engine building allowed, so that TensorRT writes its engines and timing cache into
//! [`TensorRtOptions::cache_dir`], then records what it built in [`RECORD_FILE`] there.
//!
//! At load, a TensorRT provider with [`TensorRtOptions::build_engines`] off (the default) is used only if
//! that record matches the model's graphs and the TensorRT options ([`engines_not_ready`]); otherwise it
//! is skipped with the reason in the [`ProviderReport`](super::ProviderReport) and the chain goes on to
//! CUDA. So without `prepare` the game starts on CUDA at once instead of spending minutes on its first
//! frame.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::dylib::ORT_VERSION;
use super::provider::{Provider, TensorRtOptions};
use super::session::{RuntimeConfig, build_session};
use crate::core::manifest::ModelManifest;
use crate::error::HeliosError;

/// File in the engine cache directory recording which model's engines `prepare` built.
pub const RECORD_FILE: &str = "helios-engines.ron";

/// What `prepare` built, compared at load with the model and options in use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EngineRecord {
    model: String,
    ort_version: String,
    fp16: bool,
    bf16: bool,
    max_workspace_bytes: Option<usize>,
    /// graph key → SHA-256 from the manifest
    graphs: BTreeMap<String, String>,
}

impl EngineRecord {
    fn new(manifest: &ModelManifest, options: &TensorRtOptions) -> Self {
        Self {
            model: manifest.name.clone(),
            ort_version: ORT_VERSION.into(),
            fp16: options.fp16,
            bf16: options.bf16,
            max_workspace_bytes: options.max_workspace_bytes,
            graphs: manifest
                .graphs
                .iter()
                .map(|(k, g)| (k.clone(), g.sha256.clone()))
                .collect(),
        }
    }
}

/// Checks that `dir` exists or can be created, and that a file can be written in it.
fn check_writable(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| {
        format!(
            "the engine cache directory {} cannot be created: {e}",
            dir.display()
        )
    })?;
    let probe = dir.join(".helios-write-probe");
    std::fs::write(&probe, b"probe").map_err(|e| {
        format!(
            "the engine cache directory {} is not writable: {e}",
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Why TensorRT must not be used for `manifest` with `options` (None: it may). Called for each TensorRT
/// entry of the chain before it is tried.
pub fn engines_not_ready(options: &TensorRtOptions, manifest: &ModelManifest) -> Option<String> {
    let Some(dir) = &options.cache_dir else {
        return Some(
            "no engine cache directory is configured (TensorRtOptions::cache_dir); set one and run the \
             `prepare` example to build the engines ahead of time"
                .into(),
        );
    };
    if options.build_engines {
        return check_writable(dir).err();
    }
    let path = dir.join(RECORD_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(_) => {
            return Some(format!(
                "no prepared engines in {} (run `cargo run --release --no-default-features --example \
                 prepare -- --model MODEL_DIR --cache {}` once; building them here would take minutes)",
                dir.display(),
                dir.display()
            ));
        }
    };
    let want = EngineRecord::new(manifest, options);
    match ron::from_str::<EngineRecord>(&text) {
        Ok(have) if have == want => None,
        Ok(have) => Some(format!(
            "the engines in {} were prepared for {} (ONNX Runtime {}, fp16 {}, bf16 {}), not for this \
             model and these options; run `prepare` again",
            dir.display(),
            have.model,
            have.ort_version,
            have.fp16,
            have.bf16
        )),
        Err(e) => Some(format!(
            "{} is unreadable ({e}); run `prepare` again",
            path.display()
        )),
    }
}

/// Progress of [`prepare`], one event before and one after each graph.
#[derive(Clone, Debug, PartialEq)]
pub enum PrepareProgress {
    /// Building the session (and TensorRT engine) of graph `index` of `total`.
    Started {
        /// 0-based position.
        index: usize,
        /// Number of graphs.
        total: usize,
        /// Graph key.
        key: String,
    },
    /// That graph is ready.
    Finished {
        /// 0-based position.
        index: usize,
        /// Number of graphs.
        total: usize,
        /// Graph key.
        key: String,
        /// Seconds its session took to create.
        seconds: f64,
    },
}

/// What [`prepare`] built.
#[derive(Clone, Debug, PartialEq)]
pub struct PrepareReport {
    /// The engine cache directory.
    pub cache_dir: PathBuf,
    /// Graph key and seconds, in build order.
    pub graphs: Vec<(String, f64)>,
}

/// Creates every session of the model in `dir` on the first TensorRT provider of `config`, with engine
/// building allowed, so TensorRT writes its engines into the cache directory; then records them.
///
/// Fails with [`HeliosError::ProviderUnavailable`] (provider `TensorRT`) when TensorRT cannot be
/// registered or the cache directory is missing or not writable, and with [`HeliosError::Unsupported`]
/// when the chain has no TensorRT entry.
pub fn prepare(
    dir: &Path,
    config: &RuntimeConfig,
    progress: &mut dyn FnMut(PrepareProgress),
) -> Result<PrepareReport, HeliosError> {
    let manifest = ModelManifest::load(dir)?;
    let Some(mut options) = config.providers.iter().find_map(|p| match p {
        Provider::TensorRt(o) => Some(o.clone()),
        _ => None,
    }) else {
        return Err(HeliosError::Unsupported {
            what: "preparing TensorRT engines without a TensorRT entry in the provider chain"
                .into(),
        });
    };
    options.build_engines = true;
    let unavailable = |reason: String| HeliosError::ProviderUnavailable {
        provider: "TensorRT".into(),
        reason,
    };
    if let Some(reason) = engines_not_ready(&options, &manifest) {
        return Err(unavailable(reason));
    }
    let cache_dir = options.cache_dir.clone().unwrap_or_default();
    // A stale record must not vouch for engines this run may fail to finish.
    let _ = std::fs::remove_file(cache_dir.join(RECORD_FILE));
    let provider = Provider::TensorRt(options.clone());
    let total = manifest.graphs.len();
    let mut built = Vec::new();
    for (index, (key, spec)) in manifest.graphs.iter().enumerate() {
        progress(PrepareProgress::Started {
            index,
            total,
            key: key.clone(),
        });
        let start = Instant::now();
        let path = dir.join(&spec.file);
        build_session(&path, key, &provider, config, None).map_err(
            |(provider_fault, reason)| {
                if provider_fault {
                    unavailable(reason)
                } else {
                    HeliosError::ModelCorrupt {
                        path: path.clone(),
                        reason,
                    }
                }
            },
        )?;
        let seconds = start.elapsed().as_secs_f64();
        progress(PrepareProgress::Finished {
            index,
            total,
            key: key.clone(),
            seconds,
        });
        built.push((key.clone(), seconds));
    }
    let record = EngineRecord::new(&manifest, &options);
    let text = ron::ser::to_string_pretty(&record, Default::default())
        .map_err(|e| HeliosError::internal(format!("serialising the engine record: {e}")))?;
    let record_path = cache_dir.join(RECORD_FILE);
    std::fs::write(&record_path, text).map_err(|source| HeliosError::Io {
        path: record_path,
        source,
    })?;
    Ok(PrepareReport {
        cache_dir,
        graphs: built,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_decides_whether_tensorrt_may_load() {
        let manifest = crate::core::manifest::tests::tiny();
        let dir = std::env::temp_dir().join(format!("helios-trt-record-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut o = TensorRtOptions::default();
        assert!(
            engines_not_ready(&o, &manifest)
                .unwrap()
                .contains("no engine cache directory"),
            "no cache dir must skip TensorRT"
        );
        o.cache_dir = Some(dir.clone());
        assert!(
            engines_not_ready(&o, &manifest)
                .unwrap()
                .contains("no prepared engines"),
            "an unprepared cache must skip TensorRT"
        );
        std::fs::create_dir_all(&dir).unwrap();
        let record = EngineRecord::new(&manifest, &o);
        std::fs::write(dir.join(RECORD_FILE), ron::ser::to_string(&record).unwrap()).unwrap();
        assert_eq!(engines_not_ready(&o, &manifest), None, "a matching record");
        o.bf16 = true;
        assert!(
            engines_not_ready(&o, &manifest)
                .unwrap()
                .contains("not for this model and these options"),
            "other options need another prepare"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
