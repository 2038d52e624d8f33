#!/usr/bin/env python3
"""Soak the demo: run it headless under Xvfb (lavapipe, software Vulkan) with its three screens for a
given time, sample its resident memory (VmRSS of /proc/PID/status) and each screen's frames shown every
interval, then print a table, the memory slope in MB/hour (least squares over the samples after the
warm-up) and whether every screen kept showing new frames: none held a frame longer than --max-hold
(screens share the generator, so a background screen holds its frame between chunks, for a minute or more
on a loaded 2-core machine). Writes the samples to out/soak/*.csv.

Standard library only. Needs xvfb-run and Mesa's lavapipe (apt-get install xvfb libvulkan1
mesa-vulkan-drivers) and a release build of the demo, which it makes (`cargo build --release --example
demo`) unless --no-build is given.

    tools/soak/soak.py                          # an hour, a sample a minute
    tools/soak/soak.py --duration 900           # 15 minutes
    tools/soak/soak.py --duration 180 --interval 10 --warmup 60 -- --pattern   # demo flags after --

Exit status: 0 if every screen kept showing new frames after the warm-up, 1 if not, 2 if the demo could not
run.
"""

import argparse
import csv
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "target" / "release" / "examples" / "demo"
LAVAPIPE = "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json"
REPORT = re.compile(r"^demo report: t=(\S+) frames=(\d+)((?: \S+=\d+)*)\s*$")


def resident_mb(pid):
    """VmRSS of a process in MB, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def find_demo(root_pid):
    """The demo's pid among the descendants of xvfb-run (it starts Xvfb and then the demo)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: the ppid is the second field after it
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        try:
            if os.path.realpath(f"/proc/{pid}/exe") == str(DEMO.resolve()):
                return pid
        except OSError:
            pass
        todo.extend(children.get(pid, []))
    return None


def slope(points):
    """Least-squares slope of (x, y) points; None with fewer than two distinct x."""
    n = len(points)
    if n < 2:
        return None
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def load_average():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=3600, help="seconds to run (default 3600)")
    parser.add_argument("--interval", type=float, default=60, help="seconds between samples (default 60)")
    parser.add_argument("--warmup", type=float, default=120, help="seconds left out of the slope (default 120)")
    parser.add_argument("--max-hold", type=float, default=300,
                        help="longest a screen may show no new frame, seconds (default 300)")
    parser.add_argument("--size", default="640x360", help="window size (default 640x360: lavapipe is slow)")
    parser.add_argument("--no-build", action="store_true", help="use target/release/examples/demo as it is")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "soak", help="CSV directory")
    parser.add_argument("demo_args", nargs="*", help="more demo flags, after --")
    args = parser.parse_args()

    if not args.no_build:
        print("building the demo (release)...", flush=True)
        build = subprocess.run(["cargo", "build", "--release", "--example", "demo"], cwd=ROOT)
        if build.returncode != 0:
            return 2
    if not DEMO.exists():
        print(f"soak: {DEMO} is missing", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if os.path.exists(LAVAPIPE):
        env.setdefault("VK_ICD_FILENAMES", LAVAPIPE)
    env.setdefault("RUST_LOG", "warn")
    command = [
        "xvfb-run", "-a", "-s", "-screen 0 1280x720x24",
        str(DEMO), "--autopilot", "--size", args.size,
        "--report-every", str(args.interval), *args.demo_args,
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_path = args.out / f"soak-{stamp}.log"
    csv_path = args.out / f"soak-{stamp}.csv"
    log = open(log_path, "w")
    # a session of its own, so the whole tree (xvfb-run, Xvfb, the demo) ends together
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True
    )
    samples = []
    screens = []
    demo_pid = None
    started = time.monotonic()

    def read_reports():
        nonlocal demo_pid
        for line in proc.stdout:
            log.write(line)
            match = REPORT.match(line)
            if not match:
                continue
            if demo_pid is None:
                demo_pid = find_demo(proc.pid)
            rss = resident_mb(demo_pid) if demo_pid else None
            shown = dict(kv.split("=") for kv in match.group(3).split())
            for name in shown:
                if name not in screens:
                    screens.append(name)
            samples.append({
                "t": float(match.group(1)),
                "rss_mb": rss,
                "frames": int(match.group(2)),
                "shown": {k: int(v) for k, v in shown.items()},
                "load": load_average(),
            })

    reader = threading.Thread(target=read_reports, daemon=True)
    reader.start()
    while time.monotonic() - started < args.duration + args.interval / 2 and proc.poll() is None:
        time.sleep(1)
    died = proc.poll()
    if died is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=5)
    log.close()

    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t_s", "rss_mb", "app_frames", *[f"shown_{s}" for s in screens], "load1"])
        for s in samples:
            writer.writerow([
                f"{s['t']:.1f}", "" if s["rss_mb"] is None else f"{s['rss_mb']:.1f}", s["frames"],
                *[s["shown"].get(n, "") for n in screens], f"{s['load']:.2f}",
            ])

    print(f"\n| t (s) | RSS (MB) | app frames | {' | '.join(screens)} | load |")
    print("|---|---|---|" + "---|" * len(screens) + "---|")
    for s in samples:
        rss = "-" if s["rss_mb"] is None else f"{s['rss_mb']:.1f}"
        shown = " | ".join(str(s["shown"].get(n, "-")) for n in screens)
        print(f"| {s['t']:.0f} | {rss} | {s['frames']} | {shown} | {s['load']:.2f} |")

    if died is not None:
        print(f"\nsoak: the demo exited early with status {died}; see {log_path}", file=sys.stderr)
    steady = [s for s in samples if s["t"] >= args.warmup and s["rss_mb"] is not None]
    per_hour = slope([(s["t"] / 3600.0, s["rss_mb"]) for s in steady])
    # longest time each screen showed no new frame, at the sampling resolution
    holds = {}
    for name in screens:
        since, longest = None, 0.0
        for a, b in zip(steady, steady[1:]):
            if b["shown"].get(name, 0) > a["shown"].get(name, 0):
                since = None
            else:
                since = a["t"] if since is None else since
                longest = max(longest, b["t"] - since)
        holds[name] = longest
    kept = len(steady) >= 2 and all(h < args.max_hold for h in holds.values()) and all(
        steady[-1]["shown"].get(n, 0) > steady[0]["shown"].get(n, 0) for n in screens
    )
    loads = [s["load"] for s in samples]
    print()
    if per_hour is None:
        print(f"memory slope: not enough samples after the {args.warmup:.0f} s warm-up")
    else:
        print(
            f"memory slope after {args.warmup:.0f} s: {per_hour:+.1f} MB/hour over {len(steady)} samples "
            f"({steady[0]['rss_mb']:.1f} -> {steady[-1]['rss_mb']:.1f} MB)"
        )
    print(
        f"every screen kept showing new frames (no hold of {args.max_hold:.0f} s or more): "
        f"{'yes' if kept else 'NO'}; longest hold per screen: "
        + ", ".join(f"{n} {h:.0f} s" for n, h in holds.items())
    )
    if loads:
        print(f"load average (1 min) during the run: {min(loads):.2f} to {max(loads):.2f}")
    print(f"samples: {csv_path}\ndemo log: {log_path}")
    if died is not None and died != 0:
        return 2
    return 0 if kept else 1


if __name__ == "__main__":
    sys.exit(main())
