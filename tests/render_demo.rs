//! Renders the demo for real: a window under Xvfb on Mesa's lavapipe (software Vulkan), two
//! screenshots in its scripted mode, and checks that every screen's area shows a picture (not blank)
//! that changes between the two. Skips, saying why, where `xvfb-run` or lavapipe is missing
//! (CI installs `xvfb libvulkan1 mesa-vulkan-drivers`).
//!
//! The demo runs on the pattern backend (the real sampler with synthetic networks): its frames have
//! strong contrast, so "not blank" is unambiguous, and the run needs no ONNX Runtime.
//! `HELIOS_RENDER_TEST_ONNX=1` runs `models/helios-tiny` through ONNX Runtime instead; the tiny model's
//! random-weight frames are low-contrast noise, so the "not blank" threshold is lower then.
//! The screenshots stay in `target/tmp/render_demo/` (`a.png`, `b.png`, with `*.regions.txt`).
#![cfg(feature = "plugin")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use image::RgbaImage;

/// Window size of the run (small: lavapipe's cost scales with pixels).
const SIZE: (u32, u32) = (640, 360);
/// The UI monitor of the demo: 128x128 px, 12 px from the top-right corner.
const MONITOR: Rect = (SIZE.0 - 12 - 128, 12, SIZE.0 - 12, 140);
/// A bare patch of the back wall, left of the window screen (nothing moves there).
const WALL: Rect = (175, 85, 245, 150);
/// Wall-clock limit of the whole demo run.
const LIMIT: Duration = Duration::from_secs(900);

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn lavapipe_icd() -> Option<PathBuf> {
    let dir = Path::new("/usr/share/vulkan/icd.d");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("lvp_icd") && n.ends_with(".json"))
        })
}

/// `target/debug/examples/demo`, next to this test's `deps/` directory.
fn demo_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe
        .parent()?
        .parent()?
        .join("examples")
        .join(format!("demo{}", std::env::consts::EXE_SUFFIX));
    bin.is_file().then_some(bin)
}

/// Region statistics: the largest per-channel standard deviation (texture or colour noise; 0 for a
/// flat area), the mean absolute difference to the same region of another image, and the mean.
fn region_stats(a: &RgbaImage, b: &RgbaImage, (x0, y0, x1, y1): Rect) -> (f64, f64, f64) {
    // Shrink by 15 % to stay clear of frames and anti-aliased edges.
    let (mx, my) = ((x1 - x0) * 15 / 100, (y1 - y0) * 15 / 100);
    let (x0, y0, x1, y1) = (x0 + mx, y0 + my, x1 - mx, y1 - my);
    let (mut n, mut sum, mut sq, mut diff) = (0f64, [0f64; 3], [0f64; 3], 0f64);
    for y in y0..y1 {
        for x in x0..x1 {
            let (p, q) = (a.get_pixel(x, y), b.get_pixel(x, y));
            for c in 0..3 {
                let v = f64::from(p[c]);
                sum[c] += v;
                sq[c] += v * v;
                diff += (v - f64::from(q[c])).abs() / 3.0;
            }
            n += 1.0;
        }
    }
    let n = n.max(1.0);
    let spread = (0..3)
        .map(|c| (sq[c] / n - (sum[c] / n).powi(2)).max(0.0).sqrt())
        .fold(0.0, f64::max);
    (spread, diff / n, sum.iter().sum::<f64>() / (3.0 * n))
}

/// A rectangle in pixels: x0, y0, x1, y1.
type Rect = (u32, u32, u32, u32);

fn parse_regions(path: &Path) -> Result<Vec<(String, Rect)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let num = |i: usize, max: u32| -> Result<u32, String> {
                let v: i64 = f
                    .get(i)
                    .ok_or("short line")?
                    .parse()
                    .map_err(|e| format!("{line}: {e}"))?;
                Ok(v.clamp(0, i64::from(max)) as u32)
            };
            Ok((
                f[0].to_string(),
                (
                    num(1, SIZE.0)?,
                    num(2, SIZE.1)?,
                    num(3, SIZE.0)?,
                    num(4, SIZE.1)?,
                ),
            ))
        })
        .collect()
}

#[test]
fn demo_renders_changing_screens_under_xvfb() -> Result<(), String> {
    let Some(icd) = lavapipe_icd() else {
        eprintln!(
            "SKIPPED demo_renders_changing_screens_under_xvfb: lavapipe is missing (apt-get install mesa-vulkan-drivers libvulkan1)"
        );
        return Ok(());
    };
    if !on_path("xvfb-run") {
        eprintln!(
            "SKIPPED demo_renders_changing_screens_under_xvfb: xvfb-run is missing (apt-get install xvfb)"
        );
        return Ok(());
    }
    let Some(demo) = demo_binary() else {
        eprintln!(
            "SKIPPED demo_renders_changing_screens_under_xvfb: the demo example is not built (cargo test builds it)"
        );
        return Ok(());
    };
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("render_demo");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let (a, b) = (out.join("a.png"), out.join("b.png"));

    let mut cmd = Command::new("xvfb-run");
    cmd.args(["-a", "-s", "-screen 0 1280x720x24"])
        .arg(&demo)
        .args([
            "--size",
            &format!("{}x{}", SIZE.0, SIZE.1),
            "--frames",
            "60",
            "--autopilot",
            "--timeout",
            "600",
        ])
        .arg("--screenshot-at")
        .arg(format!("12:{}", a.display()))
        .arg("--screenshot")
        .arg(&b)
        .env("VK_ICD_FILENAMES", &icd)
        .env("WGPU_BACKEND", "vulkan")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(out.join("demo.log")).map_err(|e| e.to_string())?);
    let onnx = std::env::var_os("HELIOS_RENDER_TEST_ONNX").is_some_and(|v| v == "1");
    if !onnx {
        cmd.arg("--pattern");
    }
    // A flat or unrendered area measures below 1.
    let min_spread = if onnx { 1.0 } else { 8.0 };
    let mut child = cmd.spawn().map_err(|e| format!("starting xvfb-run: {e}"))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            return Err(format!(
                "the demo did not finish within {LIMIT:?}; log: {}",
                out.join("demo.log").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = std::fs::read_to_string(out.join("demo.log")).unwrap_or_default();
    let tail: String = log
        .lines()
        .rev()
        .take(25)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    if !status.success() {
        return Err(format!(
            "the demo exited with {status}; last log lines:\n{tail}"
        ));
    }
    let load = |p: &Path| {
        image::open(p)
            .map(|i| i.to_rgba8())
            .map_err(|e| format!("{}: {e}\n{tail}", p.display()))
    };
    let (img_a, img_b) = (load(&a)?, load(&b)?);
    assert_eq!(
        img_a.dimensions(),
        SIZE,
        "the screenshot has the window's size"
    );

    let mut regions = parse_regions(&PathBuf::from(format!("{}.regions.txt", a.display())))?;
    assert!(
        regions.iter().any(|(n, _)| n == "window") && regions.iter().any(|(n, _)| n == "mood"),
        "the demo reports where its two in-world screens are: {regions:?}"
    );
    regions.push(("monitor".into(), MONITOR));
    let mut report = Vec::new();
    for (name, rect) in &regions {
        let (spread, change, mean) = region_stats(&img_a, &img_b, *rect);
        report.push(format!(
            "{name} {rect:?}: std {spread:.1}, mean {mean:.1}, change {change:.1}"
        ));
        assert!(
            rect.2 > rect.0 + 8 && rect.3 > rect.1 + 8,
            "{name} is visible on screen: {rect:?}"
        );
        assert!(
            spread > min_spread && mean > 8.0 && mean < 250.0,
            "{name} shows a picture, not a blank area ({})",
            report.join("; ")
        );
        assert!(
            change > 1.5,
            "{name} changes between the screenshots ({})",
            report.join("; ")
        );
    }
    // Control: a bare patch of the back wall stays the same, so the change test can tell.
    let (_, wall_change, _) = region_stats(&img_a, &img_b, WALL);
    assert!(
        wall_change < 1.0,
        "the bare wall is static between the screenshots (change {wall_change:.2})"
    );
    eprintln!(
        "render_demo: {}; wall change {wall_change:.2}",
        report.join("; ")
    );
    Ok(())
}
