"""The profile report: the printed summary, ``report.html`` with its plots (also written as
PNGs, matplotlib Agg backend), and ``compare`` of several profiles.

Every number shown comes from ``pipeline.profiling.stats.compute_stats`` of the profile; each
number in the HTML tables carries its stats key (``data-stat="e2e_ms.p99"``) so that a test can
check it against ``profile.json``.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.profiling.stats import PCTS, compute_stats, frame_times, lookup, stage_order

PLOTS = ("latency", "stages", "breakdown", "drops", "system")
NOT_WORK = ("sync",)          # waiting for the sweep and for room downstream, not work


def fmt(value: Any) -> str:
    """The one way a number is written (summary, HTML, compare)."""
    if value is None:
        return "-"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.2f}"


# --- Summary --------------------------------------------------------------------------------

def stats_rows(stats: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, stats key prefix) of every latency row: end to end, output interval, each stage."""
    rows = [("end to end", "e2e_ms"), ("output interval", "interval_ms")]
    rows += [(("sync (waiting)" if n == "sync" else n), f"stages_ms.{n}") for n in stats.get("stages_ms", {})]
    return rows


def render_text(profile: dict[str, Any]) -> str:
    st = compute_stats(profile)
    run, m = profile["run"], profile["machine"]
    lines = ["", f"segfuse profile: {run['input']} ({run['config']}), {st['frames_done']} frames",
             f"  machine      {m['cpu_model']}, {m['cores_logical']} cores; GPU: {_gpu_text(m['gpu'])}; "
             f"Jetson: {_jetson_text(m['jetson'])}",
             f"  run          policy {run['policy']}, rate {_rate_text(run)}, masks {run['masks']}",
             f"  frames       {st['frames_in']} in, {st['frames_done']} out, {st['dropped']} dropped, "
             f"{st['failed']} failed ({fmt(st['drop_pct'])}% lost)"]
    if "throughput_fps" in st:
        j = st["jitter_ms"]
        lines.append(f"  throughput   {fmt(st['throughput_fps'])} frames/s; jitter: output interval std "
                     f"{fmt(j['interval_std'])} ms, latency p99-p50 {fmt(j['latency_p99_minus_p50'])} ms")
        lines.append(f"  {'ms':<22}" + "".join(f"{k:>9}" for k in PCTS))
        for label, key in stats_rows(st):
            v = lookup(st, key)
            lines.append(f"  {label:<22}" + "".join(f"{fmt(v.get(k)):>9}" for k in PCTS))
    sy = st.get("system", {})
    if "cpu_mean_pct" in sy:
        lines.append(f"  system       CPU {fmt(sy['cpu_mean_pct'])}% mean (busiest core {fmt(sy['cpu_busiest_core_mean_pct'])}%), "
                     f"RSS max {fmt(sy.get('rss_max_mb'))} MB, {int(sy['samples'])} samples")
    for name, why in profile["sampler"]["sources"].items():
        if name != "cpu":
            lines.append(f"  {name:<12} {why}")
    tr = profile.get("tracing")
    if tr:
        lines.append(f"  tracing      {fmt(tr['per_frame_us'])} us/frame ({int(tr['records_per_frame'])} stage records) "
                     f"= {tr['share_of_frame_pct']:.3f}% of the frame time; sampler {tr['sampler_cpu_pct_of_wall']:.2f}% "
                     f"of one core; NVTX {profile['nvtx'].split(' (')[0]}")
    return "\n".join(lines)


def _gpu_text(gpu: Any) -> str:
    return gpu if isinstance(gpu, str) else ", ".join(g["name"] for g in gpu)


def _jetson_text(j: Any) -> str:
    if isinstance(j, str):
        return j
    return f"{j.get('model')}; nvpmodel: {_first(j.get('nvpmodel'))}; jetson_clocks: {_first(j.get('jetson_clocks'))}"


def _first(text: Any) -> str:
    return str(text).splitlines()[0] if text else "-"


def _rate_text(run: dict[str, Any]) -> str:
    if run.get("rate_hz"):
        return f"{fmt(run['rate_hz'])} Hz"
    return "as fast as possible" if not run["rate"] else f"{run['rate']:g}x recorded speed"


# --- Plots ----------------------------------------------------------------------------------

def make_plots(profile: dict[str, Any], out: Path) -> dict[str, Path]:
    """The PNGs of the report (matplotlib, Agg backend): name -> path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    frames = profile["frames"]
    t0 = profile["t0_ns"]
    paths: dict[str, Path] = {}
    if not frames:
        return paths
    names = stage_order(frames)
    times = np.array([frame_times(f) for f in frames], np.int64)
    t_done = (times[:, 1] - t0) / 1e9
    lat = (times[:, 1] - times[:, 0]) / 1e6

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        p = out / f"{name}.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths[name] = p

    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(t_done, lat, ".-", lw=1, label="end to end")
    st = compute_stats(profile)
    for k, ls in (("p50", "--"), ("p99", ":")):
        ax.axhline(st["e2e_ms"][k], ls=ls, color="gray", lw=1, label=f"{k} {fmt(st['e2e_ms'][k])} ms")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("End-to-end latency of each frame (arrival -> last stage done)")
    ax.legend(loc="upper right", fontsize=8)
    save(fig, "latency")

    fig, ax = plt.subplots(figsize=(9, 3.5))
    data = [[(f["stages"][n][1] - f["stages"][n][0]) / 1e6 for f in frames if n in f["stages"]] for n in names]
    ax.boxplot(data, whis=(1, 99), showfliers=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20, fontsize=8)
    ax.set_ylabel("ms")
    ax.set_title("Per-stage time (box: p25-p75, whiskers p1-p99)")
    save(fig, "stages")

    fig, ax = plt.subplots(figsize=(9, 3.5))
    idx = np.array([f["index"] for f in frames])
    bottom = np.zeros(len(frames))
    for n in names:
        v = np.array([(f["stages"][n][1] - f["stages"][n][0]) / 1e6 if n in f["stages"] else 0.0 for f in frames])
        ax.bar(idx, v, bottom=bottom, label=n + (" (waiting)" if n in NOT_WORK else ""), width=0.9)
        bottom += v
    ax.set_xlabel("frame index")
    ax.set_ylabel("ms")
    ax.set_title("Stage breakdown per frame (stacked; parallel branches overlap in time)")
    ax.legend(fontsize=7, ncol=4, loc="upper right")
    save(fig, "breakdown")

    fig, ax = plt.subplots(figsize=(9, 3))
    order = np.argsort(times[:, 1])
    seen = np.array([f["index"] for f in frames])[order]
    lost = np.array(profile["dropped_indices"], np.int64)
    cum = np.searchsorted(np.sort(lost), seen, side="right") if lost.size else np.zeros(len(seen))
    ax.step(t_done[order], cum, where="post", label="frames lost (dropped or failed) so far")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("frames")
    ax.set_ylim(0, max(1, len(lost)) * 1.1)
    ax.set_title(f"Drops: {profile['counts']['dropped']} dropped, {profile['counts']['failed']} failed "
                 f"of {profile['counts']['in']}")
    ax.legend(fontsize=8)
    save(fig, "drops")

    samples = profile.get("samples", [])
    fig, ax = plt.subplots(figsize=(9, 3.5))
    if samples and "cpu_percent" in samples[0]:
        ts = np.array([(s["t_ns"] - t0) / 1e9 for s in samples])
        cpu = np.array([s["cpu_percent"] for s in samples], np.float64)
        for c in range(cpu.shape[1]):
            ax.plot(ts, cpu[:, c], lw=0.8, alpha=0.6, label=f"cpu{c}")
        ax.plot(ts, cpu.mean(axis=1), "k", lw=1.5, label="CPU mean")
        gpu = [s["gpu"][0]["util_pct"] if s.get("gpu") else np.nan for s in samples]
        if not np.all(np.isnan(gpu)):
            ax.plot(ts, gpu, "g", lw=1.5, label="GPU util")
        teg = [s["tegrastats"]["gr3d_pct"] if s.get("tegrastats") else np.nan for s in samples]
        if not np.all(np.isnan(np.asarray(teg, np.float64))):
            ax.plot(ts, teg, "m", lw=1.5, label="GR3D")
        ax.set_ylabel("%")
        ax2 = ax.twinx()
        ax2.plot(ts, [s["rss_mb"] for s in samples], "r--", lw=1, label="RSS (MB)")
        ax2.set_ylabel("RSS MB")
        ax2.legend(fontsize=7, loc="lower right")
        ax.axvspan(t_done.min() - lat[0] / 1e3, t_done.max(), color="yellow", alpha=0.1)
        ax.legend(fontsize=7, ncol=4, loc="upper left")
    ax.set_xlabel("time since start (s)")
    ax.set_title("System load (frames in flight shaded)")
    save(fig, "system")
    return paths


# --- HTML -----------------------------------------------------------------------------------

def _cell(stats: dict[str, Any], key: str) -> str:
    try:
        v = lookup(stats, key)
    except KeyError:
        return "<td>-</td>"
    return f'<td data-stat="{html.escape(key)}">{fmt(v)}</td>'


def render_html(profile: dict[str, Any], plots: dict[str, Path]) -> str:
    st = compute_stats(profile)
    run, m = profile["run"], profile["machine"]
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>segfuse profile</title><style>"
             "body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child,th:first-child"
             "{text-align:left}</style></head><body>",
             f"<h1>segfuse profile: {e(str(run['input']))}</h1>",
             "<h2>Run and machine</h2><table>"]
    info = [("config", run["config"]), ("policy", run["policy"]), ("rate", _rate_text(run)),
            ("masks", run["masks_label"]), ("created (UTC)", profile["created_utc"]),
            ("CPU", f"{m['cpu_model']} ({m['cores_logical']} cores)"), ("GPU", _gpu_text(m["gpu"])),
            ("Jetson", _jetson_text(m["jetson"])), ("NVTX", profile["nvtx"])]
    info += [(f"sampler: {k}", v) for k, v in profile["sampler"]["sources"].items()]
    parts += [f"<tr><td>{e(str(k))}</td><td style='text-align:left'>{e(str(v))}</td></tr>" for k, v in info]
    parts.append("</table><h2>Frames</h2><table>")
    for label, key in (("frames in", "frames_in"), ("frames out", "frames_done"), ("dropped", "dropped"),
                       ("failed", "failed"), ("lost %", "drop_pct"), ("throughput (frames/s)", "throughput_fps"),
                       ("jitter: output interval std (ms)", "jitter_ms.interval_std"),
                       ("jitter: latency p99 - p50 (ms)", "jitter_ms.latency_p99_minus_p50")):
        parts.append(f"<tr><td>{e(label)}</td>{_cell(st, key)}</tr>")
    parts.append("</table><h2>Latency (ms)</h2><table><tr><th></th>" + "".join(f"<th>{k}</th>" for k in PCTS)
                 + "</tr>")
    for label, key in stats_rows(st):
        parts.append(f"<tr><td>{e(label)}</td>" + "".join(_cell(st, f"{key}.{k}") for k in PCTS) + "</tr>")
    parts.append("</table><h2>System</h2><table>")
    for k in st.get("system", {}):
        parts.append(f"<tr><td>{e(k)}</td>{_cell(st, 'system.' + k)}</tr>")
    parts.append("</table>")
    tr = profile.get("tracing")
    if tr:
        parts.append(f"<p>Tracing cost (measured): {fmt(tr['per_frame_us'])} &micro;s per frame "
                     f"({int(tr['records_per_frame'])} stage records) = {tr['share_of_frame_pct']:.3f}% of the mean "
                     f"frame time {fmt(tr['frame_time_ms'])} ms; the system sampler used "
                     f"{tr['sampler_cpu_pct_of_wall']:.2f}% of one core.</p>")
    titles = {"latency": "Latency over time", "stages": "Per-stage distributions",
              "breakdown": "Stacked stage breakdown", "drops": "Drops", "system": "System load"}
    for name in PLOTS:
        if name in plots:
            b64 = base64.b64encode(Path(plots[name]).read_bytes()).decode()
            parts.append(f"<h2>{titles[name]}</h2><img alt='{name}' src='data:image/png;base64,{b64}'>")
    parts.append("<p>Definitions: end to end = arrival at the sync (paced replay: the sensor stamp on the wall "
                 "clock) to the end of the frame's last stage; sync is waiting, not work; output interval = time "
                 "between consecutive finished frames. Numbers from profile.json (stats).</p></body></html>")
    return "\n".join(parts)


def write_report(profile: dict[str, Any], out: str | Path) -> Path:
    out = Path(out)
    plots = make_plots(profile, out / "plots")
    path = out / "report.html"
    path.write_text(render_html(profile, plots))
    return path


# --- Compare --------------------------------------------------------------------------------

COMPARE_ROWS = (("frames out", "frames_done"), ("lost %", "drop_pct"), ("throughput fps", "throughput_fps"),
                ("e2e p50 ms", "e2e_ms.p50"), ("e2e p90 ms", "e2e_ms.p90"), ("e2e p99 ms", "e2e_ms.p99"),
                ("e2e max ms", "e2e_ms.max"), ("interval std ms", "jitter_ms.interval_std"),
                ("CPU mean %", "system.cpu_mean_pct"), ("RSS max MB", "system.rss_max_mb"))


def compare_table(profiles: list[dict[str, Any]]) -> tuple[list[str], list[tuple[str, list[Any]]]]:
    """Column names and rows (label, one value per profile): the headline rows, then every stage's p50/p99."""
    stats = [compute_stats(p) for p in profiles]
    names = [Path(p.get("_path", f"run{i}")).parent.name or f"run{i}" for i, p in enumerate(profiles)]
    rows: list[tuple[str, list[Any]]] = []

    def get(s: dict[str, Any], key: str) -> Any:
        try:
            return lookup(s, key)
        except KeyError:
            return None
    for label, key in COMPARE_ROWS:
        rows.append((label, [get(s, key) for s in stats]))
    stages: list[str] = []
    for s in stats:
        stages += [n for n in s.get("stages_ms", {}) if n not in stages]
    for n in stages:
        for k in ("p50", "p99"):
            rows.append((f"{n} {k} ms", [get(s, f"stages_ms.{n}.{k}") for s in stats]))
    return names, rows


def render_compare(profiles: list[dict[str, Any]]) -> str:
    names, rows = compare_table(profiles)
    w = max(14, *(len(n) + 2 for n in names))
    lines = [f"{'':<24}" + "".join(f"{n:>{w}}" for n in names)]
    for label, values in rows:
        lines.append(f"{label:<24}" + "".join(f"{fmt(v):>{w}}" for v in values))
    lines.append("(" + "; ".join(f"{n} = {p.get('_path', '?')}" for n, p in zip(names, profiles)) + ")")
    return "\n".join(lines)


def compare_png(profiles: list[dict[str, Any]], path: str | Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, rows = compare_table(profiles)
    stage_rows = [(l, v) for l, v in rows if l.endswith(" p50 ms") and not l.startswith("e2e")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(names))
    bottom = np.zeros(len(names))
    for label, values in stage_rows:
        v = np.array([0.0 if a is None else a for a in values])
        axes[0].bar(x, v, bottom=bottom, label=label.replace(" p50 ms", ""))
        bottom += v
    axes[0].set_xticks(x, names, rotation=15)
    axes[0].set_ylabel("ms (p50 per stage, stacked)")
    axes[0].legend(fontsize=7)
    row = dict(rows)
    for k, off in (("e2e p50 ms", -0.2), ("e2e p99 ms", 0.2)):
        axes[1].bar(x + off, [0.0 if a is None else a for a in row[k]], width=0.4, label=k)
    axes[1].set_xticks(x, names, rotation=15)
    axes[1].set_ylabel("ms")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
