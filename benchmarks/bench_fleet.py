"""Fleet evaluation on Ray against the same drives done one after another with ``segfuse eval``.

Eight short synthetic drives (seeds 701-708, FLEET_FRAMES frames each, cached under
out/bench/fleet_drives). In the same run:

1. serial (the baseline): ``segfuse eval --drive D --json F`` once per drive, one command after
   another, each a fresh process (imports, model load, the drive);
2. ours: one ``segfuse fleet eval --drives ... --workers 2`` command (its whole wall time:
   Python start, ray.init, two actors that load the models once each, the drives two at a time).

Drives/s of each, the ratio (target >= 1.7x with 2 workers on this 2-core machine), the fleet's
phases from its report (ray.init, workers ready, drive work), the ratio with ray.init left out,
and whether every drive's eval.json is byte-identical to the serial one's.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

FRAMES = int(os.environ.get("SEGFUSE_BENCH_FLEET_FRAMES", "6"))
SEEDS = tuple(range(701, 709))
WORKERS = 2
OUT = Path(os.environ.get("SEGFUSE_BENCH_OUT", "out/bench"))
REPO = Path(__file__).resolve().parents[1]


def _drives() -> list[Path]:
    from pipeline.sim.simulate import simulate

    root = OUT / f"fleet_drives_{FRAMES}"
    paths = [root / f"seed_{s}" for s in SEEDS]
    for p, s in zip(paths, SEEDS):
        if not p.exists():
            print(f"generating bench drive {p} ({FRAMES} frames)", flush=True)
            simulate(p, frames=FRAMES, seed=s, progress=False)
    return paths


def _segfuse(*args: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "--log-level", "WARNING", *args], cwd=REPO, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"segfuse {' '.join(args)} failed ({r.returncode}): {r.stderr[-2000:]}")
    return dt


def main() -> None:
    drives = [p.resolve() for p in _drives()]
    work = (OUT / "fleet_run").resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    n = len(drives)

    serial = []
    for d in drives:
        serial.append(_segfuse("eval", "--drive", str(d), "--json", str(work / f"serial_{d.name}.json"),
                               "--no-progress"))
    serial_s = sum(serial)

    fleet_out = work / "fleet"
    fleet_s = _segfuse("fleet", "eval", "--drives", *map(str, drives), "--out", str(fleet_out), "--workers",
                       str(WORKERS), "--no-progress")
    rep = json.loads((fleet_out / "fleet_report.json").read_text())
    f = rep["fleet"]
    same = sum((fleet_out / "drives" / d.name / "eval.json").read_bytes()
               == (work / f"serial_{d.name}.json").read_bytes() for d in drives)
    ray_init = f["ray"]["init_s"]

    print(f"{n} synthetic drives x {FRAMES} frames (full size), default DeepLab + Mask R-CNN on ONNX Runtime CPU "
          f"(1 thread each), {os.cpu_count()} CPU cores")
    print(f"  baseline: segfuse eval, one drive after another   {serial_s:7.1f} s  {n / serial_s:.3f} drives/s  "
          f"(per drive {min(serial):.1f}-{max(serial):.1f} s, each a fresh process)")
    print(f"  ours: segfuse fleet eval --workers {WORKERS}             {fleet_s:7.1f} s  {n / fleet_s:.3f} drives/s  "
          f"(whole command)")
    print(f"    of which ray.init {ray_init:.1f} s, workers ready (imports, models loaded once each) "
          f"{f['actors_ready_s']:.1f} s, drive work {f['work_s']:.1f} s "
          f"({rep['throughput']['frames_per_s']:.2f} frames/s across workers), workers stopped + ray.shutdown "
          f"{f['teardown_s']:.1f} s, the rest (Python start, imports, keys, report) "
          f"{fleet_s - ray_init - f['actors_ready_s'] - f['work_s'] - f['teardown_s']:.1f} s")
    print(f"  ratio (ours / baseline, drives/s): {serial_s / fleet_s:.2f}x   (target >= 1.7x)")
    print(f"  ratio with ray.init left out (a cluster already running): {serial_s / (fleet_s - ray_init):.2f}x")
    print(f"  per-drive metrics identical to the serial run (eval.json bytes): {same}/{n}")
