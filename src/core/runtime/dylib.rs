//! Finding (and if need be fetching) the ONNX Runtime shared library.
//!
//! `ort` is built with `load-dynamic`, so nothing is linked at build time. The library is looked for,
//! in order:
//! 1. `ORT_DYLIB_PATH` (a file path; an error if it does not exist);
//! 2. next to the running executable (what a shipped game does);
//! 3. an installed Python `onnxruntime-gpu` or `onnxruntime` 1.31.x (`HELIOS_PYTHON`, default `python3`);
//! 4. the cache directory (`HELIOS_ORT_CACHE`, else `$XDG_CACHE_HOME/bevy_helios`, else
//!    `~/.cache/bevy_helios`), filled once by
//! 5. fetching the pinned PyPI wheel with `pip download` and unpacking its libraries there, unless
//!    `HELIOS_ORT_NO_DOWNLOAD=1`. `HELIOS_ORT_FLAVOR=gpu` fetches `onnxruntime-gpu` (CUDA 13) instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::HeliosError;

/// The ONNX Runtime release `ort` 2.0.0-rc.15 is built against.
pub const ORT_VERSION: &str = "1.31.1";
/// Accepted version prefix of an installed library.
pub const ORT_VERSION_PREFIX: &str = "1.31.";

/// Where the library came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrtSource {
    /// `ORT_DYLIB_PATH`.
    EnvVar,
    /// Next to the executable.
    BesideExecutable,
    /// An installed Python package (name).
    PythonPackage(String),
    /// The cache directory.
    Cache,
    /// Fetched now into the cache.
    Fetched,
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

/// The cache directory for fetched libraries.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HELIOS_ORT_CACHE") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .or_else(|| std::env::var_os("LOCALAPPDATA").map(PathBuf::from))?;
    Some(base.join("bevy_helios"))
}

fn flavor() -> &'static str {
    match std::env::var("HELIOS_ORT_FLAVOR").as_deref() {
        Ok("gpu") => "onnxruntime-gpu",
        _ => "onnxruntime",
    }
}

fn python() -> String {
    std::env::var("HELIOS_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Asks Python where an installed onnxruntime keeps its library.
fn from_python() -> Option<OrtLibrary> {
    let script = "import importlib.util,os\n\
        spec=importlib.util.find_spec('onnxruntime')\n\
        import onnxruntime as o\n\
        print(o.__version__)\n\
        print(os.path.join(os.path.dirname(o.__file__),'capi'))\n\
        print(','.join(o.get_available_providers()))";
    let out = Command::new(python()).args(["-c", script]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let version = lines.next()?.trim().to_string();
    let capi = PathBuf::from(lines.next()?.trim());
    let providers = lines.next().unwrap_or("");
    if !version.starts_with(ORT_VERSION_PREFIX) {
        tracing::debug!("python onnxruntime {version} ignored: need {ORT_VERSION_PREFIX}x");
        return None;
    }
    let package = if providers.contains("CUDA") {
        "onnxruntime-gpu"
    } else {
        "onnxruntime"
    };
    find_in_dir(&capi).map(|path| OrtLibrary {
        path,
        source: OrtSource::PythonPackage(format!("{package} {version}")),
    })
}

/// Downloads the pinned wheel with pip and unpacks its ONNX Runtime libraries into `dest`.
fn fetch_wheel(dest: &Path) -> Result<PathBuf, HeliosError> {
    let package = flavor();
    let parent = dest.parent().unwrap_or(dest);
    std::fs::create_dir_all(parent).map_err(|source| HeliosError::Io {
        path: parent.into(),
        source,
    })?;
    let staging = parent.join(format!(".fetch-{}-{}", package, std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|source| HeliosError::Io {
        path: staging.clone(),
        source,
    })?;
    tracing::info!(
        "fetching {package}=={ORT_VERSION} from PyPI into {} (once)",
        dest.display()
    );
    let spec = format!("{package}=={ORT_VERSION}");
    let out = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
        ])
        .arg(&staging)
        .arg(&spec)
        .output()
        .map_err(|e| {
            HeliosError::RuntimeUnavailable(format!(
                "could not run `{} -m pip` to fetch {spec}: {e}. Install Python 3 with pip, or set \
                 ORT_DYLIB_PATH to libonnxruntime {ORT_VERSION}",
                python()
            ))
        })?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(HeliosError::RuntimeUnavailable(format!(
            "`pip download {spec}` failed (offline?): {}. Set ORT_DYLIB_PATH to libonnxruntime \
             {ORT_VERSION}, or `pip install {package}=={ORT_VERSION}`",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // Unpack onnxruntime/capi/*onnxruntime* from the wheel (a zip) with Python's zipfile.
    let unpack = "import sys,zipfile,glob,os\n\
        whl=glob.glob(os.path.join(sys.argv[1],'*.whl'))[0]\n\
        z=zipfile.ZipFile(whl)\n\
        out=os.path.join(sys.argv[1],'lib')\n\
        os.makedirs(out,exist_ok=True)\n\
        n=0\n\
        for m in z.namelist():\n\
        \x20   b=os.path.basename(m)\n\
        \x20   if m.startswith('onnxruntime/capi/') and (b.startswith('libonnxruntime') or b.startswith('onnxruntime_providers') or b == 'onnxruntime.dll'):\n\
        \x20       open(os.path.join(out,b),'wb').write(z.read(m)); n+=1\n\
        print(n)";
    let out = Command::new(python())
        .args(["-c", unpack])
        .arg(&staging)
        .output()
        .map_err(|e| HeliosError::RuntimeUnavailable(format!("unpacking the wheel failed: {e}")))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(HeliosError::RuntimeUnavailable(format!(
            "unpacking the {spec} wheel failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let lib = staging.join("lib");
    // Publish atomically: a concurrent fetch that wins the rename is just as good.
    match std::fs::rename(&lib, dest) {
        Ok(()) => {}
        Err(_) if find_in_dir(dest).is_some() => {}
        Err(source) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(HeliosError::Io {
                path: dest.to_path_buf(),
                source,
            });
        }
    }
    let _ = std::fs::remove_dir_all(&staging);
    find_in_dir(dest).ok_or_else(|| {
        HeliosError::RuntimeUnavailable(format!(
            "the {spec} wheel held no ONNX Runtime library for this platform"
        ))
    })
}

/// Locates the library following the documented order, fetching it if allowed.
pub fn locate() -> Result<OrtLibrary, HeliosError> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(OrtLibrary {
                path,
                source: OrtSource::EnvVar,
            });
        }
        return Err(HeliosError::RuntimeUnavailable(format!(
            "ORT_DYLIB_PATH={} does not name a file",
            path.display()
        )));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        && let Some(path) = find_in_dir(&dir)
    {
        return Ok(OrtLibrary {
            path,
            source: OrtSource::BesideExecutable,
        });
    }
    if let Some(lib) = from_python() {
        return Ok(lib);
    }
    let cache = cache_dir().ok_or_else(|| {
        HeliosError::RuntimeUnavailable(
            "no cache directory (set HELIOS_ORT_CACHE or HOME), and ORT_DYLIB_PATH is not set"
                .into(),
        )
    })?;
    let dest = cache.join(format!("{}-{ORT_VERSION}", flavor()));
    if let Some(path) = find_in_dir(&dest) {
        return Ok(OrtLibrary {
            path,
            source: OrtSource::Cache,
        });
    }
    if std::env::var("HELIOS_ORT_NO_DOWNLOAD").is_ok_and(|v| v == "1") {
        return Err(HeliosError::RuntimeUnavailable(format!(
            "no ONNX Runtime {ORT_VERSION} found (ORT_DYLIB_PATH unset, none beside the executable, \
             no Python onnxruntime {ORT_VERSION_PREFIX}x, nothing in {}) and HELIOS_ORT_NO_DOWNLOAD=1",
            dest.display()
        )));
    }
    fetch_wheel(&dest).map(|path| OrtLibrary {
        path,
        source: OrtSource::Fetched,
    })
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
}
