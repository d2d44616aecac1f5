"""The fleet report (``OUT/fleet_report.json`` + ``.html`` + ``plots/``) and ``segfuse fleet compare``.

Per drive: status (ok, failed, interrupted), the error, the headline metrics pulled out of the
drive's own outputs (segfuse eval's metrics, or segfuse run's summary), wall seconds, frames and
milliseconds per frame, the worker. The HTML puts failed drives first, then the worst by the
headline metric; its table sorts by any column (click a header); the plots are the metric
distributions over the drives and the latency of each drive. Fleet-level numbers are the
mean / median / min / max of per-drive values over the drives that completed (a drive-weighted
view; pooled metrics over all frames are what ``segfuse eval --drive D1 D2 ...`` computes).
"""
from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputDataError

log = logging.getLogger(__name__)

# key, label, higher is better
EVAL_METRICS = (("deeplab.miou", "mIoU", True), ("deeplab.pixel_accuracy", "pixel acc", True),
                ("maskrcnn.ap", "mask AP", True), ("maskrcnn.ap50", "mask AP50", True),
                ("fusion.class_accuracy", "point class acc", True), ("fusion.instance_recall", "instance recall",
                                                                       True),
                ("fusion.centroid_to_box_median_m", "centroid-box median m", False))
RUN_METRICS = (("throughput_fps", "frames/s", True), ("latency_p50_ms", "latency p50 ms", False),
               ("latency_p99_ms", "latency p99 ms", False), ("frames_failed", "frames failed", False),
               ("camera_only", "camera-only frames", False))
COMMON = (("ms_per_frame", "ms/frame", False), ("seconds", "seconds", False))


def headline(mode: str, rec: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics of one drive's record (its own eval metrics or run summary)."""
    m = rec.get("metrics") or {}
    v: dict[str, float] = {}
    if mode == "eval":
        if "deeplab" in m:
            v["deeplab.miou"] = m["deeplab"]["miou"]
            v["deeplab.pixel_accuracy"] = m["deeplab"]["pixel_accuracy"]
            for name, iou in m["deeplab"]["iou"].items():
                v[f"deeplab.iou.{name}"] = iou
        if "maskrcnn" in m:
            v["maskrcnn.ap"] = m["maskrcnn"]["ap"]
            v["maskrcnn.ap50"] = m["maskrcnn"]["ap50"]
        for fz in (m.get("fusion") or {}).values():
            v["fusion.class_accuracy"] = fz["points"]["class_accuracy"]
            v["fusion.instance_recall"] = fz["instances"]["recall"]
            if fz["objects"]["centroid_to_box_m"]:
                v["fusion.centroid_to_box_median_m"] = fz["objects"]["centroid_to_box_m"]["median"]
    elif m:
        v["throughput_fps"] = m["throughput_fps"]
        if m.get("latency_ms"):
            v["latency_p50_ms"] = m["latency_ms"]["p50"]
            v["latency_p99_ms"] = m["latency_ms"]["p99"]
        v["frames_failed"] = float(sum(m["frames"]["failed"].values()))
        v["camera_only"] = float(m["sync"].get("camera_only", 0))
    if rec.get("seconds") is not None:
        v["seconds"] = rec["seconds"]
        if rec.get("frames"):
            v["ms_per_frame"] = 1000.0 * rec["seconds"] / rec["frames"]
    return v


def metric_specs(mode: str, rows: list[dict[str, float]]) -> list[tuple[str, str, bool]]:
    """The metrics present in any row, in display order (per-class IoUs after the headline ones)."""
    base = (EVAL_METRICS if mode == "eval" else RUN_METRICS) + COMMON
    present = set().union(*rows) if rows else set()
    specs = [s for s in base if s[0] in present]
    specs += [(k, k.split(".")[-1] + " IoU", True) for k in sorted(present) if k.startswith("deeplab.iou.")]
    return specs


def primary(mode: str, specs: list[tuple[str, str, bool]]) -> tuple[str, str, bool] | None:
    order = ("deeplab.miou", "maskrcnn.ap", "fusion.class_accuracy") if mode == "eval" else ("latency_p99_ms",
                                                                                           "ms_per_frame")
    for key in order:
        for s in specs:
            if s[0] == key:
                return s
    return specs[0] if specs else None


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    return {"n": int(a.size), "mean": float(a.mean()), "median": float(np.median(a)), "min": float(a.min()),
            "max": float(a.max())}


def build_report(fleet: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    mode = fleet["mode"]
    drives = []
    for r in records:
        drives.append({"drive": r["drive"], "path": r["path"], "status": r["status"], "error": r.get("error"),
                       "this_run": r.get("this_run", False), "seconds": r.get("seconds"), "frames": r.get("frames"),
                       "worker": r.get("worker"), "out": r.get("out"), "key": r.get("key"),
                       "finished_utc": r.get("finished_utc"), "metrics": headline(mode, r)})
    ok = [d for d in drives if d["status"] == "ok"]
    specs = metric_specs(mode, [d["metrics"] for d in drives])
    prim = primary(mode, specs)

    def badness(d: dict[str, Any]) -> tuple:
        if d["status"] != "ok":
            return (0, 0.0)
        if prim is None or prim[0] not in d["metrics"]:
            return (1, 0.0)
        v = d["metrics"][prim[0]]
        return (1, v if prim[2] else -v)

    drives.sort(key=badness)
    fleet_metrics = {}
    for key, _, _ in specs:
        vals = [d["metrics"][key] for d in ok if key in d["metrics"]]
        if vals:
            fleet_metrics[key] = _stats(vals)
    ran = [d for d in drives if d["this_run"] and d["status"] != "interrupted"]
    work_s = fleet.get("work_s") or 0.0
    counts = {s: sum(1 for d in drives if d["status"] == s) for s in ("ok", "failed", "interrupted")}
    throughput = {"drives_this_run": len(ran), "frames_this_run": fleet.get("frames_this_run", 0),
                  "drives_per_s": len(ran) / work_s if work_s > 0 and ran else None,
                  "frames_per_s": fleet.get("frames_this_run", 0) / work_s if work_s > 0 and ran else None}
    return {"fleet": fleet, "counts": counts, "throughput": throughput,
            "primary_metric": prim[0] if prim else None,
            "metric_specs": [{"key": k, "label": lbl, "higher_is_better": hb} for k, lbl, hb in specs],
            "fleet_metrics": fleet_metrics, "drives": drives}


def write_report(fleet: dict[str, Any], records: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    report = build_report(fleet, records)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fleet_report.json").write_text(json.dumps(report, indent=1, default=str))
    plots = make_plots(report, out / "plots")
    (out / "fleet_report.html").write_text(render_html(report, plots))
    return report


def load_report(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "fleet_report.json"
    try:
        data = json.loads(p.read_text())
    except OSError as exc:
        raise InputDataError(f"cannot read the fleet report: {exc}", path=p) from exc
    except ValueError as exc:
        raise InputDataError(f"not a fleet report (bad JSON: {exc})", path=p) from exc
    if "drives" not in data or "fleet" not in data:
        raise InputDataError("not a fleet report (no 'drives' / 'fleet')", path=p)
    return data


# --- Text -----------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def render_text(report: dict[str, Any], worst: int = 5) -> str:
    f, c, t = report["fleet"], report["counts"], report["throughput"]
    plan = f["plan"]
    lines = ["", f"segfuse fleet {f['mode']}: {len(report['drives'])} drives -> {f['out']}",
             f"  drives       {c['ok']} ok, {c['failed']} failed, {c['interrupted']} interrupted"
             f"  (this run: {plan['to_run']} to do, {plan['complete_before']} complete before, "
             f"{plan['failed_before']} failed before and not retried)"
             + (f"  [stopped by {f['stopped_by']}]" if f.get("stopped_by") else "")]
    if f.get("ray"):
        lines.append(f"  ray          {f['ray']['address']}, {len(f['workers'])} workers "
                     f"({f['cpus_per_worker']:g} CPU, {f['gpus_per_worker']:g} GPU each); ray.init "
                     f"{f['ray']['init_s']:.1f} s, workers ready (models loaded) {f.get('actors_ready_s', 0):.1f} s")
    if t["drives_per_s"]:
        lines.append(f"  throughput   {t['drives_per_s']:.3f} drives/s, {t['frames_per_s']:.2f} frames/s over "
                     f"{f['work_s']:.1f} s of drive work; whole command {f['wall_s']:.1f} s")
    lines.append(f"  hashing      {f['hashed_bytes'] / 1e6:.1f} MB in {f['hash_s']:.2f} s")
    specs = {s["key"]: s["label"] for s in report["metric_specs"]}
    if report["fleet_metrics"]:
        lines.append(f"  {'metric':<24}{'mean':>10}{'median':>10}{'min':>10}{'max':>10}")
        for key, st in report["fleet_metrics"].items():
            if key.startswith("deeplab.iou."):
                continue
            lines.append(f"  {specs.get(key, key):<24}{_fmt(st['mean']):>10}{_fmt(st['median']):>10}"
                         f"{_fmt(st['min']):>10}{_fmt(st['max']):>10}")
    pk = report["primary_metric"]
    lines.append(f"  worst drives (failed first, then by {specs.get(pk, pk)}):")
    for d in report["drives"][:worst]:
        val = d["metrics"].get(pk) if pk else None
        lines.append(f"    {d['drive']:<28}{d['status']:<12}{_fmt(val):>10}  {d['error'] or ''}"[:200])
    lines.append(f"  look at      {Path(f['out']) / 'fleet_report.html'}")
    return "\n".join(lines)


# --- Plots and HTML -------------------------------------------------------------------------

def make_plots(report: dict[str, Any], out: Path) -> dict[str, Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [d for d in report["drives"] if d["status"] == "ok"]
    paths: dict[str, Path] = {}
    if not ok:
        return paths
    out.mkdir(parents=True, exist_ok=True)
    specs = [s for s in report["metric_specs"] if not s["key"].startswith("deeplab.iou.")]
    if specs:
        n = len(specs)
        cols = min(3, n)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
        for ax, s in zip(axes.flat, specs):
            vals = [d["metrics"][s["key"]] for d in ok if s["key"] in d["metrics"]]
            ax.hist(vals, bins=min(20, max(5, len(vals))), color="#4477aa")
            ax.set_title(f"{s['label']} ({'higher' if s['higher_is_better'] else 'lower'} is better)", fontsize=9)
            ax.set_ylabel("drives", fontsize=8)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.tight_layout()
        paths["distributions"] = out / "distributions.png"
        fig.savefig(paths["distributions"], dpi=90)
        plt.close(fig)
    lat_key = "latency_p50_ms" if report["fleet"]["mode"] == "run" else "ms_per_frame"
    lat = [(d["drive"], d["metrics"][lat_key], d["metrics"].get("latency_p99_ms")) for d in ok
           if lat_key in d["metrics"]]
    if lat:
        lat.sort(key=lambda x: -x[1])
        fig, ax = plt.subplots(figsize=(9, max(2.5, 0.22 * len(lat) + 1)))
        y = np.arange(len(lat))
        ax.barh(y, [v for _, v, _ in lat], color="#66aa55", label=lat_key.replace("_", " "))
        p99 = [(i, v) for i, (_, _, v) in enumerate(lat) if v is not None]
        if p99:
            ax.plot([v for _, v in p99], [i for i, _ in p99], "k|", ms=10, label="latency p99 ms")
        ax.set_yticks(y, [n for n, _, _ in lat], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("ms" + (" per frame (drive wall time / frames)" if lat_key == "ms_per_frame" else
                              " (source -> recorded)"))
        ax.set_title("Latency per drive, slowest first")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths["latency"] = out / "latency.png"
        fig.savefig(paths["latency"], dpi=90)
        plt.close(fig)
    return paths


SORT_JS = """<script>
document.querySelectorAll('table.sortable th').forEach(function(th, col) {
  th.style.cursor = 'pointer';
  th.addEventListener('click', function() {
    var tbody = th.closest('table').tBodies[0];
    var rows = Array.from(tbody.rows);
    var asc = th.dataset.asc !== '1'; th.dataset.asc = asc ? '1' : '0';
    rows.sort(function(a, b) {
      var x = a.cells[col].dataset.v !== undefined ? a.cells[col].dataset.v : a.cells[col].textContent;
      var y = b.cells[col].dataset.v !== undefined ? b.cells[col].dataset.v : b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return asc ? c : -c;
    });
    rows.forEach(function(r) { tbody.appendChild(r); });
  });
});
</script>"""


def render_html(report: dict[str, Any], plots: dict[str, Path]) -> str:
    e = html.escape
    f, c, t = report["fleet"], report["counts"], report["throughput"]
    specs = report["metric_specs"]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>segfuse fleet report</title><style>"
             "body{font-family:sans-serif;max-width:1400px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right;font-size:13px}"
             "td.l,th.l{text-align:left}tr.failed{background:#fdd}tr.interrupted{background:#ffd}"
             "th{background:#eee}</style></head><body>",
             f"<h1>segfuse fleet {e(f['mode'])}: {len(report['drives'])} drives</h1><table>"]
    info = [("out", f["out"]), ("config", f["config"]), ("options", " ".join(f.get("eval_argv") or [])),
            ("drives", f"{c['ok']} ok, {c['failed']} failed, {c['interrupted']} interrupted"),
            ("this run", f"{f['plan']['to_run']} run, {f['plan']['complete_before']} skipped (complete), "
                         f"{f['plan']['failed_before']} failed before and not retried"),
            ("throughput", f"{_fmt(t['drives_per_s'])} drives/s, {_fmt(t['frames_per_s'])} frames/s"),
            ("workers", ", ".join(f"{w['host']}:{w['pid']} (models loaded in {w['load_s']:.1f} s)"
                                  for w in f.get("workers", [])) or "-"),
            ("ray", json.dumps(f.get("ray")) if f.get("ray") else "not started (nothing to do)"),
            ("started / finished (UTC)", f"{f['started_utc']} / {f.get('finished_utc')}"),
            ("stopped by", f.get("stopped_by") or "-")]
    parts += [f"<tr><td class='l'>{e(k)}</td><td class='l'>{e(str(v))}</td></tr>" for k, v in info]
    parts.append("</table><h2>Fleet metrics (over the drives that completed)</h2><table><tr><th class='l'>metric"
                 "</th><th>mean</th><th>median</th><th>min</th><th>max</th><th>drives</th></tr>")
    labels = {s["key"]: s["label"] for s in specs}
    for key, st in report["fleet_metrics"].items():
        parts.append(f"<tr><td class='l'>{e(labels.get(key, key))}</td>" + "".join(
            f"<td>{_fmt(st[k])}</td>" for k in ("mean", "median", "min", "max", "n")) + "</tr>")
    pk = report["primary_metric"]
    parts.append(f"</table><h2>Drives: failed first, then worst by {e(labels.get(pk, str(pk)))} (click a header "
                 "to sort)</h2><table class='sortable'><thead><tr><th class='l'>drive</th><th class='l'>status</th>"
                 + "".join(f"<th>{e(s['label'])}</th>" for s in specs)
                 + "<th>frames</th><th class='l'>worker</th><th class='l'>this run</th><th class='l'>error</th>"
                 "</tr></thead><tbody>")
    for d in report["drives"]:
        m = d["metrics"]
        w = d.get("worker") or {}
        cells = "".join(f"<td data-v='{m[s['key']]:.6g}'>{_fmt(m[s['key']])}</td>" if s["key"] in m else
                        "<td data-v=''>-</td>" for s in specs)
        parts.append(f"<tr class='{e(d['status'])}'><td class='l' title='{e(d['path'])}'>{e(d['drive'])}</td>"
                     f"<td class='l'>{e(d['status'])}</td>{cells}<td>{_fmt(d.get('frames'))}</td>"
                     f"<td class='l'>{e(str(w.get('host', '')))}:{e(str(w.get('pid', '')))}</td>"
                     f"<td class='l'>{'ran' if d['this_run'] else 'kept'}</td>"
                     f"<td class='l'>{e(d.get('error') or '')}</td></tr>")
    parts.append("</tbody></table>")
    for name, title in (("distributions", "Distributions over the drives"), ("latency", "Latency per drive")):
        if name in plots:
            b64 = base64.b64encode(Path(plots[name]).read_bytes()).decode()
            parts.append(f"<h2>{title}</h2><img alt='{name}' src='data:image/png;base64,{b64}'>")
    parts.append("<p>Each drive's own outputs are under out/drives/&lt;drive&gt;/ (what segfuse run or segfuse "
                 "eval writes), its record under out/units/. ms/frame = the drive's wall time on its worker / "
                 "frames.</p>" + SORT_JS + "</body></html>")
    return "\n".join(parts)


# --- Compare --------------------------------------------------------------------------------

def compare(a: dict[str, Any], b: dict[str, Any], top: int = 10) -> dict[str, Any]:
    """Per-metric differences (B - A) over the drives complete in both, and the drives that changed most."""
    da = {d["drive"]: d for d in a["drives"]}
    db = {d["drive"]: d for d in b["drives"]}
    both = [n for n in da if n in db and da[n]["status"] == "ok" and db[n]["status"] == "ok"]
    specs = {s["key"]: s for s in a["metric_specs"] + b["metric_specs"]}
    metrics = {}
    for key, s in specs.items():
        pairs = [(da[n]["metrics"][key], db[n]["metrics"][key]) for n in both
                 if key in da[n]["metrics"] and key in db[n]["metrics"]]
        if not pairs:
            continue
        va, vb = np.array(pairs).T
        metrics[key] = {"label": s["label"], "higher_is_better": s["higher_is_better"], "drives": len(pairs),
                        "mean_a": float(va.mean()), "mean_b": float(vb.mean()), "delta": float((vb - va).mean()),
                        "worse_drives": int(((vb < va) if s["higher_is_better"] else (vb > va)).sum()),
                        "better_drives": int(((vb > va) if s["higher_is_better"] else (vb < va)).sum())}
    pk = b.get("primary_metric") or a.get("primary_metric")
    changed = []
    if pk:
        for n in both:
            if pk in da[n]["metrics"] and pk in db[n]["metrics"]:
                changed.append({"drive": n, "a": da[n]["metrics"][pk], "b": db[n]["metrics"][pk],
                                "delta": db[n]["metrics"][pk] - da[n]["metrics"][pk]})
        changed.sort(key=lambda x: -abs(x["delta"]))
    status = [{"drive": n, "a": da[n]["status"], "b": db[n]["status"]} for n in da
              if n in db and da[n]["status"] != db[n]["status"]]
    return {"a": a["fleet"]["out"], "b": b["fleet"]["out"], "drives_compared": len(both), "metrics": metrics,
            "primary_metric": pk, "changed_most": changed[:top], "status_changed": status,
            "only_a": sorted(set(da) - set(db)), "only_b": sorted(set(db) - set(da))}


def render_compare(c: dict[str, Any]) -> str:
    lines = ["", f"segfuse fleet compare: A = {c['a']}, B = {c['b']} ({c['drives_compared']} drives complete in both)",
             f"  {'metric':<24}{'A mean':>10}{'B mean':>10}{'B - A':>10}{'worse':>7}{'better':>7}"]
    for key, m in c["metrics"].items():
        lines.append(f"  {m['label']:<24}{_fmt(m['mean_a']):>10}{_fmt(m['mean_b']):>10}{m['delta']:>+10.4f}"
                     f"{m['worse_drives']:>7}{m['better_drives']:>7}")
    if c["changed_most"]:
        label = c["metrics"].get(c["primary_metric"], {}).get("label", c["primary_metric"])
        lines.append(f"  drives that changed most ({label}):")
        for d in c["changed_most"]:
            lines.append(f"    {d['drive']:<28}{_fmt(d['a']):>10} -> {_fmt(d['b']):<10}({d['delta']:+.4f})")
    for s in c["status_changed"]:
        lines.append(f"  status changed: {s['drive']}: {s['a']} -> {s['b']}")
    if c["only_a"] or c["only_b"]:
        lines.append(f"  only in A: {', '.join(c['only_a']) or '-'}; only in B: {', '.join(c['only_b']) or '-'}")
    return "\n".join(lines)
