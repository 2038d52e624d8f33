//! Finding the ONNX Runtime shared library. Only a lookup: nothing here starts a process or touches the
//! network, so a shipped game never runs Python or fetches anything.
//!
//! `ort` is built with `load-dynamic`, so nothing is linked at build time. The library is looked for, in
//! order:
//! 1. `ORT_DYLIB_PATH` (a file path; an error if it does not name a file);
//! 2. next to the running executable, and in its parent directory when the executable sits in `deps/`
//!    or `examples/` (cargo's test and example binaries). This is where a shipped game puts it;
//! 3. in debug builds only, the `target/<profile>` directory the build script filled (for binaries run
//!    from elsewhere); release builds look only where a player's copy will be.
//!
//! The crate's `build.rs` fetches the pinned PyPI wheel once into a cache, checks its sha256 and copies
//! its libraries into `target/<profile>/`, `deps/` and `examples/`, so `cargo run` and `cargo test` need
//! no other step. If it could not (offline, no Python), it said so in a build warning, and
//! [`locate`] fails with [`HeliosError::RuntimeUnavailable`] naming what it looked at.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::HeliosError;

/// The ONNX Runtime release `ort` 2.0.0-rc.15 is built against (build.rs pins the same).
pub const ORT_VERSION: &str = "1.31.1";
/// Accepted version prefix of an installed library.
pub const ORT_VERSION_PREFIX: &str = "1.31.";

/// Where the library came from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OrtSource {
    /// `ORT_DYLIB_PATH`.
    EnvVar,
    /// Next to the executable (or in the parent of its `deps/` or `examples/` directory).
    BesideExecutable,
    /// The `target/<profile>` directory the build script filled (debug builds only).
    BuildDir,
}

/// A located library.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrtLibrary {
    /// Path of `libonnxruntime.so.1.31.x` (or the platform's equivalent).
    pub path: PathBuf,
    /// How it was found.
    pub source: OrtSource,
}

fn lib_file_name() -> String {
    if cfg!(target_os = "windows") {
        "onnxruntime.dll".into()
    } else if cfg!(target_os = "macos") {
        format!("libonnxruntime.{ORT_VERSION}.dylib")
    } else {
        format!("libonnxruntime.so.{ORT_VERSION}")
    }
}

/// Finds a library file named like ONNX Runtime's main library in `dir`.
fn find_in_dir(dir: &Path) -> Option<PathBuf> {
    let exact = dir.join(lib_file_name());
    if exact.is_file() {
        return Some(exact);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            (name.starts_with("libonnxruntime.so.") && name.contains(ORT_VERSION_PREFIX))
                || (name.starts_with("libonnxruntime.")
                    && name.ends_with(".dylib")
                    && name.contains(ORT_VERSION_PREFIX))
        })
        .collect();
    found.sort();
    found.pop()
}

/// The directory build.rs placed the library in, baked in at compile time; debug builds only.
fn build_dir() -> Option<PathBuf> {
    if cfg!(debug_assertions) {
        option_env!("HELIOS_ORT_BUILD_DIR").map(PathBuf::from)
    } else {
        None
    }
}

/// The directories looked in for an executable at `exe`: its own, then the parent of `deps/` or
/// `examples/`.
fn beside(exe: &Path) -> Vec<PathBuf> {
    let Some(dir) = exe.parent() else {
        return Vec::new();
    };
    let mut dirs = vec![dir.to_path_buf()];
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
        && let Some(parent) = dir.parent()
    {
        dirs.push(parent.to_path_buf());
    }
    dirs
}

/// Locates the library following the documented order.
pub fn locate() -> Result<OrtLibrary, HeliosError> {
    locate_from(
        std::env::var_os("ORT_DYLIB_PATH"),
        std::env::current_exe().ok(),
        build_dir(),
    )
}

/// [`locate`] with its inputs spelled out, so tests need not change the process environment.
fn locate_from(
    env_path: Option<OsString>,
    exe: Option<PathBuf>,
    build_dir: Option<PathBuf>,
) -> Result<OrtLibrary, HeliosError> {
    if let Some(path) = env_path.filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(OrtLibrary {
                path,
                source: OrtSource::EnvVar,
            });
        }
        return Err(HeliosError::RuntimeUnavailable(format!(
            "ORT_DYLIB_PATH={} does not name a file; point it at ONNX Runtime {ORT_VERSION}'s {}",
            path.display(),
            lib_file_name()
        )));
    }
    let mut looked = Vec::new();
    let candidates = exe
        .as_deref()
        .map(beside)
        .unwrap_or_default()
        .into_iter()
        .map(|d| (d, OrtSource::BesideExecutable))
        .chain(build_dir.map(|d| (d, OrtSource::BuildDir)));
    for (dir, source) in candidates {
        if let Some(path) = find_in_dir(&dir) {
            return Ok(OrtLibrary { path, source });
        }
        looked.push(dir.display().to_string());
    }
    Err(HeliosError::RuntimeUnavailable(format!(
        "ONNX Runtime {ORT_VERSION} not found: ORT_DYLIB_PATH is unset and no {} is in {}. A game ships \
         it (with libonnxruntime_providers_shared, see README) next to its executable, or sets \
         ORT_DYLIB_PATH to the file; in a cargo build, bevy_helios's build script puts it beside the \
         binaries unless it warned (offline, no Python or pip): online, `cargo clean -p bevy_helios` \
         and build again, or set ORT_DYLIB_PATH",
        lib_file_name(),
        if looked.is_empty() {
            "(the executable's path is unknown)".to_string()
        } else {
            looked.join(", ")
        }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_versioned_library_in_a_directory() {
        let dir = std::env::temp_dir().join(format!("helios-dylib-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(
            find_in_dir(&dir).is_none(),
            "an empty directory has no library"
        );
        let name = if cfg!(target_os = "macos") {
            "libonnxruntime.1.31.0.dylib".to_string()
        } else {
            "libonnxruntime.so.1.31.0".to_string()
        };
        std::fs::write(dir.join(&name), b"x").unwrap();
        std::fs::write(dir.join("libonnxruntime.so.1.20.0"), b"x").unwrap();
        let found = find_in_dir(&dir).expect("a 1.31 library is found");
        assert!(found.ends_with(&name), "found {}", found.display());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A fresh directory under the system temp dir, unique to this test.
    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("helios-dylib-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn ort_dylib_path_naming_a_missing_file_is_an_error() {
        let dir = scratch("env-missing");
        let missing = dir.join("no-such-libonnxruntime.so");
        // A library beside the executable must not hide a wrong ORT_DYLIB_PATH.
        std::fs::write(dir.join(lib_file_name()), b"x").unwrap();
        let err = locate_from(Some(missing.clone().into()), Some(dir.join("game")), None)
            .expect_err("ORT_DYLIB_PATH naming no file should fail, not fall back");
        let text = err.to_string();
        assert!(
            text.contains("ORT_DYLIB_PATH") && text.contains("no-such-libonnxruntime.so"),
            "the error should name the variable and the path: {text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ort_dylib_path_naming_a_file_wins() {
        let dir = scratch("env-file");
        let lib = dir.join("custom.so");
        std::fs::write(&lib, b"x").unwrap();
        std::fs::write(dir.join(lib_file_name()), b"x").unwrap();
        let found = locate_from(Some(lib.clone().into()), Some(dir.join("game")), None).unwrap();
        assert_eq!(
            found,
            OrtLibrary {
                path: lib,
                source: OrtSource::EnvVar
            },
            "ORT_DYLIB_PATH should be used as given"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn test_and_example_binaries_find_the_library_one_level_up() {
        for sub in ["deps", "examples"] {
            let dir = scratch(&format!("beside-{sub}"));
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            std::fs::write(dir.join(lib_file_name()), b"x").unwrap();
            let found = locate_from(None, Some(dir.join(sub).join("runtime-0123")), None).unwrap();
            assert_eq!(
                (found.path, found.source),
                (dir.join(lib_file_name()), OrtSource::BesideExecutable),
                "a binary in {sub}/ should find target/<profile>/{}",
                lib_file_name()
            );
            // Elsewhere only the executable's own directory counts.
            let other = dir.join("bin");
            std::fs::create_dir_all(&other).unwrap();
            assert!(locate_from(None, Some(other.join("game")), None).is_err());
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn nothing_found_names_every_place_looked_and_what_to_do() {
        let dir = scratch("none");
        let exe_dir = dir.join("deps");
        let build = dir.join("build-dir");
        std::fs::create_dir_all(&exe_dir).unwrap();
        std::fs::create_dir_all(&build).unwrap();
        let err = locate_from(
            Some(OsString::new()),
            Some(exe_dir.join("t")),
            Some(build.clone()),
        )
        .expect_err("no library anywhere");
        let text = err.to_string();
        for place in [&exe_dir, &dir, &build] {
            assert!(
                text.contains(&place.display().to_string()),
                "the error should name {}: {text}",
                place.display()
            );
        }
        assert!(
            text.contains("ORT_DYLIB_PATH"),
            "the error should say ORT_DYLIB_PATH is the way out: {text}"
        );
        std::fs::write(build.join(lib_file_name()), b"x").unwrap();
        let found = locate_from(None, Some(exe_dir.join("t")), Some(build.clone())).unwrap();
        assert_eq!(
            found.source,
            OrtSource::BuildDir,
            "the build directory comes last"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn build_script_pins_the_same_version() {
        let build = include_str!("../../../build.rs");
        assert!(
            build.contains(&format!("const ORT_VERSION: &str = \"{ORT_VERSION}\";")),
            "build.rs must fetch ONNX Runtime {ORT_VERSION}, the version this crate loads"
        );
    }

    /// The run-time side only looks for files: no process, no Python, no pip anywhere in `src/`.
    /// (The needles are split so this file does not match itself.)
    #[test]
    fn src_starts_no_process_and_fetches_nothing() {
        let needles = [
            ["process::", "Command"].concat(),
            ["Command", "::new"].concat(),
            ["pip ", "download"].concat(),
            format!("{q}pip{q}", q = '"'),
            ["python", "3"].concat(),
        ];
        let mut stack = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")];
        let mut scanned = 0;
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for needle in &needles {
                        assert!(
                            !text.contains(needle.as_str()),
                            "{} contains `{needle}`: a game must not start processes or fetch \
                             ONNX Runtime at run time (build.rs does that)",
                            path.display()
                        );
                    }
                    scanned += 1;
                }
            }
        }
        assert!(scanned > 20, "only {scanned} source files scanned");
    }
}
