//! Places the pinned ONNX Runtime library beside the built binaries, so `cargo run` and `cargo test` need
//! no other step and a shipped game never fetches anything at run time (src/core/runtime/dylib.rs only
//! looks for files).
//!
//! Once per cache: `pip download` of the pinned PyPI wheel for the target platform, its sha256 checked
//! against [`PINS`], its `onnxruntime/capi` libraries unpacked into the cache directory (`HELIOS_ORT_CACHE`,
//! else `$XDG_CACHE_HOME/bevy_helios`, else `~/.cache/bevy_helios`) with a `SHA256SUMS` of what was unpacked.
//! Every run: the cached libraries are checked against that file and copied (hard-linked where possible)
//! into `target/<profile>/`, `deps/` (test binaries) and `examples/`, as ort's `copy-dylibs` does.
//!
//! Skipped with `ORT_DYLIB_PATH` (the game loads that file), under docs.rs (`DOCS_RS`); with
//! `HELIOS_ORT_NO_DOWNLOAD=1` only the cache is used. `HELIOS_ORT_FLAVOR=gpu` picks `onnxruntime-gpu`.
//! Offline, or without Python and pip, the build still succeeds with a `cargo:warning` saying what to do.

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Must equal `ORT_VERSION` in src/core/runtime/dylib.rs (a unit test there checks).
const ORT_VERSION: &str = "1.31.1";
/// The wheels are chosen for one Python so the same file comes whatever the local interpreter is.
const PY_VERSION: &str = "3.12";
const PY_ABI: &str = "cp312";

/// One pinned wheel: PyPI's sha256 of the file (from https://pypi.org/simple/<package>/).
struct Pin {
    package: &'static str,
    os: &'static str,
    arch: &'static str,
    platform: &'static str,
    file: &'static str,
    sha256: &'static str,
}

const fn pin(
    package: &'static str,
    os: &'static str,
    arch: &'static str,
    platform: &'static str,
    file: &'static str,
    sha256: &'static str,
) -> Pin {
    Pin {
        package,
        os,
        arch,
        platform,
        file,
        sha256,
    }
}

#[rustfmt::skip]
const PINS: &[Pin] = &[
    pin("onnxruntime", "linux", "x86_64", "manylinux_2_28_x86_64",
        "onnxruntime-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl",
        "1f3dea47f2f0e5117c2404cea7d21fd253ae7836a3bf167a501cdfbb2600d536"),
    pin("onnxruntime", "linux", "aarch64", "manylinux_2_28_aarch64",
        "onnxruntime-1.31.1-cp312-cp312-manylinux_2_28_aarch64.whl",
        "0b9a492176886992e0e875f06bc0367e333f5fff11711a2d642e18b02f3009cc"),
    pin("onnxruntime", "macos", "aarch64", "macosx_14_0_arm64",
        "onnxruntime-1.31.1-cp312-cp312-macosx_14_0_arm64.whl",
        "96dd2564b10ea7153ad9c207e7cd8e5917cb3ba521e0e0a62ac03486fdc8d56c"),
    pin("onnxruntime", "windows", "x86_64", "win_amd64",
        "onnxruntime-1.31.1-cp312-cp312-win_amd64.whl",
        "ae8a9a351efda685cc59a66226cdefaa37a126c1d66872ca23a2de9425326130"),
    pin("onnxruntime", "windows", "aarch64", "win_arm64",
        "onnxruntime-1.31.1-cp312-cp312-win_arm64.whl",
        "fe8b9ac1ae8e894e12c47ee82e4f6dfc1835768133687257866469fda80d0bf1"),
    pin("onnxruntime-gpu", "linux", "x86_64", "manylinux_2_28_x86_64",
        "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl",
        "05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7"),
    pin("onnxruntime-gpu", "linux", "aarch64", "manylinux_2_34_aarch64",
        "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_34_aarch64.whl",
        "a0f1725c5a6d1ef82d63498b5ebc25e2c90c9560e91dc76db9be4a49162d4d33"),
    pin("onnxruntime-gpu", "windows", "x86_64", "win_amd64",
        "onnxruntime_gpu-1.31.1-cp312-cp312-win_amd64.whl",
        "2bb1e9373baba88f6415257f5b6a589d23e23c16004f7d89adf4344eada5749e"),
];

/// Every variable this script reads (cargo reruns it when one changes, and only then).
const ENV_VARS: &[&str] = &[
    "ORT_DYLIB_PATH",
    "DOCS_RS",
    "HELIOS_ORT_NO_DOWNLOAD",
    "HELIOS_ORT_FLAVOR",
    "HELIOS_ORT_CACHE",
    "HELIOS_PYTHON",
    "XDG_CACHE_HOME",
    "HOME",
    "LOCALAPPDATA",
];

/// The list of unpacked files and their sha256, written after the wheel's hash was checked.
const SUMS_FILE: &str = "SHA256SUMS";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for var in ENV_VARS {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if env("DOCS_RS").is_some() || env("ORT_DYLIB_PATH").is_some() {
        return;
    }
    if let Err(reason) = run() {
        warn(&format!(
            "ONNX Runtime {ORT_VERSION} was not placed beside the binaries: {reason}. Built programs will \
             not start a model until it is there: with network access and Python 3 + pip, run `cargo \
             clean -p bevy_helios` and build again, or set ORT_DYLIB_PATH to the library file \
             (libonnxruntime.so.{ORT_VERSION} / libonnxruntime.{ORT_VERSION}.dylib / onnxruntime.dll) at \
             run time"
        ));
    }
}

fn run() -> Result<(), String> {
    let package = match env("HELIOS_ORT_FLAVOR").as_deref().and_then(|v| v.to_str()) {
        Some("gpu") => "onnxruntime-gpu",
        _ => "onnxruntime",
    };
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let target_env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let pin = PINS
        .iter()
        .find(|p| p.package == package && p.os == os && p.arch == arch)
        .filter(|_| !(os == "linux" && target_env != "gnu"))
        .ok_or_else(|| {
            format!("no pinned {package} {ORT_VERSION} wheel for {arch}-{os}-{target_env}")
        })?;
    let root = cache_root().ok_or("no cache directory (set HELIOS_ORT_CACHE)")?;
    let dest = root.join(format!("{package}-{ORT_VERSION}-{}", pin.platform));
    let libs = match verified(&dest) {
        Ok(libs) => libs,
        Err(why) if env("HELIOS_ORT_NO_DOWNLOAD").is_some_and(|v| v == "1") => {
            return Err(format!(
                "{why} and HELIOS_ORT_NO_DOWNLOAD=1 forbids fetching it"
            ));
        }
        Err(_) => {
            // Not retried on every build while offline: each retry would also recompile the crate.
            fetch(pin, &root, &dest)?;
            verified(&dest)?
        }
    };
    let profile = profile_dir()?;
    for dir in [
        profile.clone(),
        profile.join("deps"),
        profile.join("examples"),
    ] {
        for lib in &libs {
            let name = lib.file_name().expect("a file");
            let placed = dir.join(name);
            place(lib, &placed)
                .map_err(|e| format!("copying to {} failed: {e}", placed.display()))?;
            // A removed copy brings the script back; the copy keeps the cache file's old mtime.
            println!("cargo:rerun-if-changed={}", placed.display());
        }
    }
    // A debug-build convenience for binaries run from elsewhere (src/core/runtime/dylib.rs).
    println!("cargo:rustc-env=HELIOS_ORT_BUILD_DIR={}", profile.display());
    Ok(())
}

fn env(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

fn warn(message: &str) {
    println!("cargo:warning={}", message.replace(['\n', '\r'], " "));
}

fn cache_root() -> Option<PathBuf> {
    if let Some(dir) = env("HELIOS_ORT_CACHE") {
        return Some(PathBuf::from(dir));
    }
    let base = env("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .or_else(|| env("LOCALAPPDATA").map(PathBuf::from))?;
    Some(base.join("bevy_helios"))
}

/// `target/<profile>` (also under a custom `CARGO_TARGET_DIR` or a `--target` triple): the parent of the
/// `build` directory that holds `OUT_DIR` (`build/<pkg>-<hash>/out` or `build/<pkg>/<hash>/out`).
fn profile_dir() -> Result<PathBuf, String> {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    out.ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "build"))
        .and_then(Path::parent)
        .filter(|p| p.join("deps").is_dir())
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("unexpected OUT_DIR layout {}", out.display()))
}

fn sha256_file(path: &Path) -> Result<String, String> {
    let mut file = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The libraries in `dir` if its `SHA256SUMS` lists them and every one still matches.
fn verified(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let sums = fs::read_to_string(dir.join(SUMS_FILE))
        .map_err(|_| format!("nothing verified in {}", dir.display()))?;
    let mut libs = Vec::new();
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (hash, name) = line
            .split_once("  ")
            .ok_or_else(|| format!("{} is malformed", dir.join(SUMS_FILE).display()))?;
        let path = dir.join(name);
        if sha256_file(&path)? != hash {
            return Err(format!("{} does not match its sha256", path.display()));
        }
        libs.push(path);
    }
    if libs.is_empty() {
        return Err(format!(
            "{} lists no library",
            dir.join(SUMS_FILE).display()
        ));
    }
    Ok(libs)
}

fn python() -> Vec<OsString> {
    match env("HELIOS_PYTHON") {
        Some(p) => vec![p],
        None => vec!["python3".into(), "python".into()],
    }
}

/// Runs `python args..` with the first interpreter that starts.
fn run_python(args: &[&std::ffi::OsStr]) -> Result<std::process::Output, String> {
    let mut last = String::from("no Python interpreter");
    for py in python() {
        match Command::new(&py).args(args).output() {
            Ok(out) => return Ok(out),
            Err(e) => last = format!("could not run {}: {e}", py.to_string_lossy()),
        }
    }
    Err(last)
}

fn last_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Unpacks the ONNX Runtime libraries in `onnxruntime/capi/` (not the Python extension) of the wheel argv[1]
/// into argv[2], keeping the zip's timestamps (old, so cargo's rerun-if-changed on the copies stays quiet),
/// and prints their names.
const UNPACK: &str = r#"
import os, sys, time, zipfile
wheel, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        name = os.path.basename(info.filename)
        ours = name.startswith(("libonnxruntime", "onnxruntime_providers")) or name == "onnxruntime.dll"
        lib = name.endswith((".so", ".dylib", ".dll")) or ".so." in name
        if info.filename.startswith("onnxruntime/capi/") and ours and lib:
            path = os.path.join(out, name)
            with open(path, "wb") as f:
                f.write(z.read(info))
            t = time.mktime(info.date_time + (0, 0, -1))
            os.utime(path, (t, t))
            print(name)
"#;

/// Downloads the pinned wheel, checks it and publishes its libraries atomically as `dest`.
fn fetch(pin: &Pin, root: &Path, dest: &Path) -> Result<(), String> {
    fs::create_dir_all(root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    let staging = root.join(format!(".fetch-{}-{}", pin.package, std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    let result = fetch_into(pin, &staging, dest);
    let _ = fs::remove_dir_all(&staging);
    result
}

fn fetch_into(pin: &Pin, staging: &Path, dest: &Path) -> Result<(), String> {
    let spec = format!("{}=={ORT_VERSION}", pin.package);
    // Not a warning: cargo replays those on every build. Shown with `cargo build -vv`.
    println!(
        "fetching {spec} ({}) from PyPI into {} (once)",
        pin.platform,
        dest.display()
    );
    let wheels = staging.join("wheel");
    let out = run_python(&[
        "-m".as_ref(),
        "pip".as_ref(),
        "download".as_ref(),
        "--quiet".as_ref(),
        "--disable-pip-version-check".as_ref(),
        "--no-deps".as_ref(),
        "--only-binary=:all:".as_ref(),
        "--platform".as_ref(),
        pin.platform.as_ref(),
        "--python-version".as_ref(),
        PY_VERSION.as_ref(),
        "--implementation".as_ref(),
        "cp".as_ref(),
        "--abi".as_ref(),
        PY_ABI.as_ref(),
        "--dest".as_ref(),
        wheels.as_os_str(),
        spec.as_ref(),
    ])
    .map_err(|e| format!("{e} (Python 3 with pip is needed to fetch {spec})"))?;
    if !out.status.success() {
        return Err(format!(
            "`pip download {spec}` failed (offline?): {}",
            last_line(&out.stderr)
        ));
    }
    let wheel = wheels.join(pin.file);
    if !wheel.is_file() {
        return Err(format!("pip did not download the pinned {}", pin.file));
    }
    let actual = sha256_file(&wheel)?;
    if actual != pin.sha256 {
        return Err(format!(
            "{} has sha256 {actual}, pinned {}",
            pin.file, pin.sha256
        ));
    }
    let lib = staging.join("lib");
    let out = run_python(&[
        "-c".as_ref(),
        UNPACK.as_ref(),
        wheel.as_os_str(),
        lib.as_os_str(),
    ])?;
    if !out.status.success() {
        return Err(format!(
            "unpacking {} failed: {}",
            pin.file,
            last_line(&out.stderr)
        ));
    }
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if names.is_empty() {
        return Err(format!("{} holds no ONNX Runtime library", pin.file));
    }
    let mut sums = String::new();
    for name in &names {
        sums += &format!("{}  {name}\n", sha256_file(&lib.join(name))?);
    }
    fs::write(lib.join(SUMS_FILE), sums).map_err(|e| format!("writing {SUMS_FILE}: {e}"))?;
    // Publish atomically; a concurrent build that published first is just as good.
    if let Err(e) = fs::rename(&lib, dest)
        && verified(dest).is_err()
    {
        // A stale, unverified directory from an interrupted run: replace it.
        let _ = fs::remove_dir_all(dest);
        fs::rename(&lib, dest).map_err(|_| format!("publishing {}: {e}", dest.display()))?;
    }
    Ok(())
}

/// Copies `from` to `to` unless an identical copy is there: a hard link where possible, else a copy that
/// keeps `from`'s mtime; through a temporary name, so a reader never sees half a file.
fn place(from: &Path, to: &Path) -> std::io::Result<()> {
    let src = fs::metadata(from)?;
    if let Ok(dst) = fs::metadata(to)
        && dst.len() == src.len()
        && dst.modified().ok() == src.modified().ok()
    {
        return Ok(());
    }
    let dir = to.parent().expect("a directory");
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.helios-{}",
        to.file_name().expect("a file").to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    if fs::hard_link(from, &tmp).is_err() {
        fs::copy(from, &tmp)?;
        fs::File::options()
            .write(true)
            .open(&tmp)?
            .set_modified(src.modified()?)?;
    }
    fs::rename(&tmp, to)
}
