"""``segfuse profile``: profile a run (per-frame stage times, system load, report) and compare
profiles. Parses arguments and calls pipeline.profiling; imports nothing heavy at module level."""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)

USAGE = """segfuse profile CONFIG [--frames N] [--rate R | --hz 10,20,30 | --find-peak] [--out DIR] ...
       segfuse profile compare A.json B.json ... [--png FILE]"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", usage=USAGE,
                       help="profile a run: per-stage latency percentiles, jitter, drops, system load, HTML report",
                       description="Runs the pipeline of a run config with a system sampler alongside and writes "
                                   "OUT/profile.json (every frame, every stage, system samples, machine info) and "
                                   "OUT/report.html with its plots (OUT/plots/*.png). 'segfuse profile compare "
                                   "A.json B.json ...' prints them side by side. See docs/profiling.md.")
    p.add_argument("config", help="run config (YAML), or 'compare' followed by profile.json files / folders")
    p.add_argument("profiles", nargs="*", help="compare: the profiles (profile.json or the folder holding it)")
    p.add_argument("--input", help="source URI or path (overrides input.uri)")
    p.add_argument("--frames", type=int, help="stop after N camera frames")
    p.add_argument("--rate", type=float, help="replay pacing: 1 = recorded speed, 0 = as fast as possible")
    p.add_argument("--policy", choices=["replay", "live"], help="replay (lossless) or live (newest frame wins)")
    p.add_argument("--out", default="out/profile", help="output folder (default out/profile)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier profile's outputs in --out")
    p.add_argument("--interval", type=float, default=0.2, help="system sampling interval in s (default 0.2)")
    p.add_argument("--hz", help="fixed-rate runs at these camera rates, e.g. 10,20,30 (live policy unless "
                                "--policy), one profile each under OUT/<rate>hz/, then a comparison")
    p.add_argument("--find-peak", action="store_true",
                   help="binary search (live policy) for the highest camera rate with <= --max-drop-pct %% frames "
                        "lost and bounded latency")
    p.add_argument("--peak-range", default="2:60", help="find-peak: LO:HI camera rate in Hz (default 2:60)")
    p.add_argument("--iterations", type=int, default=4, help="find-peak: bisection steps (default 4)")
    p.add_argument("--max-drop-pct", type=float, default=1.0, help="find-peak: frames lost allowed (default 1)")
    p.add_argument("--max-latency-ms", type=float,
                   help="find-peak: end-to-end p99 bound (default: twice the p99 at the low end of the range)")
    p.add_argument("--no-report", action="store_true", help="profile.json only (no plots, no HTML)")
    p.add_argument("--png", help="compare: also draw the comparison to this PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _rates(text: str, field: str) -> list[float]:
    from pipeline.errors import ConfigError

    try:
        values = [float(v) for v in text.replace(":", ",").split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"expected numbers separated by commas, got {text!r}", field=field) from None
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"rates must be > 0 Hz, got {text!r}", field=field)
    return values


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.errors import ConfigError

    if args.config == "compare":
        return compare(args)
    if args.profiles:
        raise ConfigError(f"unexpected arguments {' '.join(args.profiles)} (did you mean 'segfuse profile compare'?)",
                          field="profile")
    from pipeline.profiling.profile import find_peak, run_profile
    from pipeline.profiling.report import render_compare, render_text, write_report
    from pipeline.run_config import load_run_config

    cfg = load_run_config(args.config).with_overrides(input=args.input, frames=args.frames, rate=args.rate,
                                                      policy=args.policy)
    out = Path(args.out)
    progress = False if args.no_progress else None
    if args.find_peak:
        lo, hi = _rates(args.peak_range, "--peak-range")[:2] if ":" in args.peak_range else (None, None)
        if lo is None or not lo < hi:
            raise ConfigError(f"expected LO:HI with LO < HI, got {args.peak_range!r}", field="--peak-range")
        result = find_peak(cfg, out, lo_hz=lo, hi_hz=hi, iterations=args.iterations,
                           max_drop_pct=args.max_drop_pct, max_latency_ms=args.max_latency_ms,
                           interval_s=args.interval, progress=not args.no_progress, overwrite=args.overwrite)
        print(f"\nsegfuse profile --find-peak: {cfg.path}, live policy, {lo:g}..{hi:g} Hz, "
              f"<= {args.max_drop_pct:g}% lost, e2e p99 <= {result['max_latency_ms']:.0f} ms")
        for t in result["trials"]:
            print(f"  {t['hz']:7.2f} Hz  {'ok ' if t['ok'] else 'NO '} lost {t['drop_pct']:5.1f}%  "
                  f"p99 {t['e2e_p99_ms']:7.1f} ms  {t['throughput_fps']:6.2f} frames/s")
        peak = result["peak_hz"]
        print(f"  peak: {peak:.2f} Hz" if peak else f"  peak: none (even {lo:g} Hz fails)")
        print(f"  look at      {out / 'peak.json'}")
        return 0
    if args.hz:
        from pipeline.profiling.profile import load_profile

        if args.policy is None:
            cfg = cfg.with_overrides(policy="live")
        paths = []
        for hz in _rates(args.hz, "--hz"):
            r = run_profile(cfg, out / f"{hz:g}hz", interval_s=args.interval, progress=progress, rate_hz=hz,
                            overwrite=args.overwrite)
            if not args.no_report:
                write_report(r.profile, r.path.parent)
            print(render_text(r.profile))
            paths.append(r.path)
        profiles = [load_profile(p) for p in paths]
        print("\n" + render_compare(profiles))
        if not args.no_report:
            from pipeline.profiling.report import compare_png
            print(f"  comparison plot: {compare_png(profiles, out / 'compare.png')}")
        return 0
    r = run_profile(cfg, out, interval_s=args.interval, progress=progress, overwrite=args.overwrite)
    print(render_text(r.profile))
    look = [str(r.path)]
    if not args.no_report:
        look.append(str(write_report(r.profile, out)))
        look.append(str(out / "plots"))
    print(f"  look at      {', '.join(look)}")
    return 0


def compare(args: argparse.Namespace) -> int:
    from pipeline.errors import ConfigError
    from pipeline.profiling.profile import load_profile
    from pipeline.profiling.report import compare_png, render_compare

    if len(args.profiles) < 1:
        raise ConfigError("give at least one profile.json (two to compare)", field="compare")
    profiles = [load_profile(p) for p in args.profiles]
    print(render_compare(profiles))
    if args.png:
        print(f"comparison plot: {compare_png(profiles, args.png)}")
    return 0
