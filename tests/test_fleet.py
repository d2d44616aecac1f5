"""segfuse fleet: Ray actors (at most 2) over small synthetic drives, through the real CLI.

Every fleet command here starts and shuts down its own embedded Ray (ray.init(num_cpus=...,
include_dashboard=False)), as a user's command would."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]
FRAMES = 2

GT_CONFIG = """\
masks: ground_truth
sync: {tolerance_ms: 20, lidar_offset_ms: 50}
sinks:
  recorder: {enabled: true}
  overlay: {enabled: false}
out: out/unused
"""


@pytest.fixture(scope="module")
def drives(tmp_path_factory) -> Path:
    """Four 2-frame synthetic drives (seeds 611-614, not the reserved test drives)."""
    from pipeline.sim.simulate import simulate

    root = tmp_path_factory.mktemp("fleet_drives")
    for seed in (611, 612, 613, 614):
        simulate(root / f"seed_{seed}", frames=FRAMES, seed=seed, progress=False)
    return root


@pytest.fixture
def gt_config(tmp_path) -> Path:
    p = tmp_path / "gt.yaml"
    p.write_text(GT_CONFIG)
    return p


def _corrupt_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    mcap = next(dst.glob("*.mcap"))
    with open(mcap, "r+b") as f:
        f.write(b"\0" * 64)                     # broken magic: the bag cannot be opened
    return dst


def _report(out: Path) -> dict:
    return json.loads((out / "fleet_report.json").read_text())


def _by_name(report: dict) -> dict:
    return {d["drive"]: d for d in report["drives"]}


@pytest.mark.slow
def test_fleet_run_isolates_a_corrupt_drive_then_skips_and_retries(drives, gt_config, tmp_path):
    from pipeline.evaluation import read_recording

    fleet_in = tmp_path / "in"
    fleet_in.mkdir()
    for seed in (611, 612, 613):
        (fleet_in / f"seed_{seed}").symlink_to(drives / f"seed_{seed}")
    _corrupt_copy(drives / "seed_614", fleet_in / "seed_614_corrupt")
    out = tmp_path / "fleet"
    argv = ["fleet", "run", str(gt_config), "--drives", str(fleet_in), "--out", str(out), "--workers", "2",
            "--no-progress"]

    assert main(argv) == 1                        # one drive failed: non-zero exit
    rep = _report(out)
    assert (out / "fleet_report.html").is_file()
    d = _by_name(rep)
    assert rep["counts"] == {"ok": 3, "failed": 1, "interrupted": 0}
    bad = d["seed_614_corrupt"]
    assert bad["status"] == "failed" and "seed_614_corrupt" in bad["error"] and "magic" in bad["error"]
    assert rep["drives"][0]["drive"] == "seed_614_corrupt"          # failed drives first
    assert len(rep["fleet"]["workers"]) == 2
    for seed in (611, 612, 613):
        run_out = out / "drives" / f"seed_{seed}"
        summary = json.loads((run_out / "summary.json").read_text())   # what segfuse run writes
        assert summary["frames"]["done"] == FRAMES and d[f"seed_{seed}"]["status"] == "ok"
        assert len(read_recording(summary["recording"])["clouds"]) == FRAMES
    units = {p.name: p.read_text() for p in (out / "units").iterdir()}
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "drives").rglob("*") if p.is_file()}

    # the same command again: everything keyed as done (or failed and not retried), no Ray started
    t0 = time.perf_counter()
    assert main(argv) == 1
    second_s = time.perf_counter() - t0
    rep2 = _report(out)
    assert rep2["fleet"]["ray"] is None and rep2["fleet"]["plan"]["to_run"] == 0
    assert rep2["fleet"]["plan"]["complete_before"] == 3 and rep2["fleet"]["plan"]["failed_before"] == 1
    assert {p.name: p.read_text() for p in (out / "units").iterdir()} == units
    assert {p: p.stat().st_mtime_ns for p in (out / "drives").rglob("*") if p.is_file()} == mtimes
    print(f"second identical fleet run: {second_s:.2f} s, all skipped")

    # --retry-failed: only the failed drive runs again
    assert main(argv + ["--retry-failed"]) == 1
    rep3 = _report(out)
    assert rep3["fleet"]["plan"]["to_run"] == 1 and rep3["fleet"]["plan"]["complete_before"] == 3
    d3 = _by_name(rep3)
    assert d3["seed_614_corrupt"]["this_run"] and d3["seed_614_corrupt"]["status"] == "failed"
    assert not any(d3[f"seed_{s}"]["this_run"] for s in (611, 612, 613))
    assert {p: p.stat().st_mtime_ns for p in (out / "drives").rglob("*") if p.is_file()} == mtimes

    # a changed config is another experiment: refused on the same --out
    gt_config.write_text(GT_CONFIG.replace("tolerance_ms: 20", "tolerance_ms: 25"))
    assert main(argv) == 2
    assert {p.name: p.read_text() for p in (out / "units").iterdir()} != {}


@pytest.mark.slow
def test_fleet_eval_metrics_identical_to_serial_eval_and_compare(drives, tmp_path, capsys):
    """Per-drive eval.json is byte for byte what `segfuse eval --drive D --json F` writes; a list
    file with a missing drive reports it; compare reads two real reports."""
    listed = [str(drives / "seed_611"), str(drives / "seed_612"), str(tmp_path / "no_such_drive")]
    lst = tmp_path / "drives.txt"
    lst.write_text("# three drives, one missing\n" + "\n".join(listed) + "\n")
    out = tmp_path / "fleet_eval"
    assert main(["fleet", "eval", "--drives", f"@{lst}", "--frames", str(FRAMES), "--out", str(out),
                 "--workers", "2", "--no-progress"]) == 1
    rep = _report(out)
    d = _by_name(rep)
    assert d["no_such_drive"]["status"] == "failed" and "not found" in d["no_such_drive"]["error"]
    for seed in (611, 612):
        serial = tmp_path / f"serial_{seed}.json"
        assert main(["eval", "--drive", str(drives / f"seed_{seed}"), "--frames", str(FRAMES), "--json", str(serial),
                     "--no-progress"]) == 0
        fleet_json = out / "drives" / f"seed_{seed}" / "eval.json"
        assert fleet_json.read_bytes() == serial.read_bytes()
        metrics = json.loads(serial.read_text())
        assert d[f"seed_{seed}"]["metrics"]["deeplab.miou"] == metrics["deeplab"]["miou"]
        assert metrics["deeplab"]["frames"] == FRAMES and metrics["maskrcnn"]["frames"] == FRAMES
    html = (out / "fleet_report.html").read_text()
    assert "class='sortable'" in html and "data:image/png;base64" in html

    # B: DeepLab on one frame per drive; compare B against A
    out_b = tmp_path / "fleet_eval_b"
    assert main(["fleet", "eval", "--drives", str(drives / "seed_611"), str(drives / "seed_612"), "--frames", "1",
                 "--only", "deeplab", "--out", str(out_b), "--workers", "1", "--no-progress"]) == 0
    capsys.readouterr()
    cmp_json = tmp_path / "cmp.json"
    assert main(["fleet", "compare", str(out), str(out_b / "fleet_report.json"), "--json", str(cmp_json)]) == 0
    text = capsys.readouterr().out
    c = json.loads(cmp_json.read_text())
    assert c["drives_compared"] == 2 and "mask AP" not in c["metrics"].get("maskrcnn.ap", {}).get("label", "")
    b = _by_name(_report(out_b))
    want = sum(b[n]["metrics"]["deeplab.miou"] - d[n]["metrics"]["deeplab.miou"] for n in ("seed_611", "seed_612")) / 2
    assert c["metrics"]["deeplab.miou"]["delta"] == pytest.approx(want)
    assert "mIoU" in text and "changed most" in text and "only in A: no_such_drive" in text


@pytest.mark.slow
def test_fleet_ctrl_c_keeps_completed_drives(drives, gt_config, tmp_path):
    """SIGINT to the command's process group (what Ctrl-C does) mid-fleet: exit 130, the report
    written, every completed drive's outputs valid, the rest recorded as interrupted; a rerun
    finishes only those."""
    from pipeline.evaluation import read_recording

    out = tmp_path / "fleet"
    specs = [str(drives / f"seed_{s}") for s in (611, 612, 613, 614)]
    cmd = [sys.executable, "-m", "pipeline.cli", "fleet", "run", str(gt_config), "--drives", *specs,
           "--out", str(out), "--workers", "1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            recs = [json.loads(p.read_text()) for p in (out / "units").glob("*.json")] if (out / "units").is_dir() else []
            if any(r["status"] == "ok" for r in recs):
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0]
        os.killpg(proc.pid, signal.SIGINT)
        log, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, log
    rep = _report(out)
    assert rep["fleet"]["stopped_by"] == "signal"
    ok = [d for d in rep["drives"] if d["status"] == "ok"]
    assert ok and rep["counts"]["interrupted"] >= 1 and rep["counts"]["ok"] + rep["counts"]["interrupted"] == 4
    for d in ok:
        summary = json.loads((Path(d["out"]) / "summary.json").read_text())
        assert len(read_recording(summary["recording"])["clouds"]) == FRAMES

    assert main(["fleet", "run", str(gt_config), "--drives", *specs, "--out", str(out), "--workers", "1",
                 "--no-progress"]) == 0
    rep2 = _report(out)
    assert rep2["counts"]["ok"] == 4 and rep2["fleet"]["plan"]["complete_before"] == len(ok)


@pytest.mark.slow
def test_worker_keeps_models_open_and_writes_what_segfuse_run_writes(drives, tmp_path):
    """The fleet worker (no Ray: the class the actors run) does two drives with one pair of open
    engines; each drive's recording holds the same fused clouds as a plain segfuse run's."""
    import numpy as np

    from pipeline.evaluation import read_recording
    from pipeline.fleet.worker import DriveWorker

    cfg = tmp_path / "models.yaml"
    cfg.write_text((REPO / "configs" / "demo.yaml").read_text().replace("enabled: true, mask_alpha", "enabled: false, "
                                                                        "mask_alpha"))
    w = DriveWorker({"mode": "run", "config": str(cfg), "frames": 1, "eval_argv": [], "cwd": str(REPO)})
    info = w.ready()
    assert set(info["engines"]) == {"deeplab", "maskrcnn"}
    engines = dict(w.engines)
    results = [w.process({"path": str(drives / f"seed_{s}"), "out": str(tmp_path / f"w{s}")}) for s in (611, 612)]
    assert [r["status"] for r in results] == ["ok", "ok"], results
    assert w.engines == engines and all(e.session is not None for e in engines.values())   # still open, same ones
    w.close()
    assert main(["run", str(cfg), "--input", str(drives / "seed_612"), "--frames", "1", "--out",
                 str(tmp_path / "plain"), "--no-progress"]) == 0
    a = read_recording(json.loads((tmp_path / "w612" / "summary.json").read_text())["recording"])["clouds"]
    b = read_recording(json.loads((tmp_path / "plain" / "summary.json").read_text())["recording"])["clouds"]
    assert a.keys() == b.keys() and len(a) == 1
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_drive_specs_and_content_keys(drives, tmp_path):
    """--drives: a folder of drives, a glob, a list file with a missing path; same-named drives in
    two places get distinct names; a drive's key follows its bytes."""
    from pipeline.errors import ConfigError
    from pipeline.fleet.drives import drive_digest, resolve_drives

    assert [r.name for r in resolve_drives([str(drives)])] == [f"seed_{s}" for s in (611, 612, 613, 614)]
    assert [r.name for r in resolve_drives([str(drives / "seed_61[12]")])] == ["seed_611", "seed_612"]
    assert [r.name for r in resolve_drives([str(drives / "seed_611")])] == ["seed_611"]     # a drive itself
    other = tmp_path / "elsewhere" / "seed_611"
    shutil.copytree(drives / "seed_611", other)
    lst = tmp_path / "list.txt"
    lst.write_text(f"# comment\n{drives / 'seed_611'}\n{other}\n{tmp_path / 'gone'}\n{drives / 'seed_611'}\n")
    refs = resolve_drives([f"@{lst}"])
    assert len(refs) == 3 and refs[2].name == "gone" and refs[0].name != refs[1].name
    assert all(r.name.startswith("seed_611-") for r in refs[:2])
    with pytest.raises(ConfigError, match="matches nothing"):
        resolve_drives([str(tmp_path / "nope_*")])

    key, nbytes = drive_digest(other)
    assert key == drive_digest(drives / "seed_611")[0] and nbytes > 0
    mcap = next(other.glob("*.mcap"))
    data = bytearray(mcap.read_bytes())
    data[len(data) // 2] ^= 1                        # one bit of the drive changed: another key
    mcap.write_bytes(bytes(data))
    assert drive_digest(other)[0] != key


def test_ray_is_imported_by_the_fleet_command_only():
    """Ray is a dependency of `segfuse fleet` alone: one module imports it, inside run_fleet's call
    path, and building the whole CLI loads no Ray."""
    import ast

    importers = []
    for path in [*REPO.glob("pipeline/**/*.py"), *REPO.glob("engines/**/*.py"), *REPO.glob("calibration/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "ray" or n.startswith("ray.") for n in names):
                importers.append((str(path.relative_to(REPO)), node.col_offset))
    assert importers and {p for p, _ in importers} == {"pipeline/fleet/execute.py"}
    assert all(col > 0 for _, col in importers)                 # inside a function, not at module level
    code = ("import sys, pipeline.cli, pipeline.fleet.execute, pipeline.fleet.report; pipeline.cli.build_parser(); "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
