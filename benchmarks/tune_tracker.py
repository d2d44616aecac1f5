"""Tracker settings on validation drives (never the test drives 5001-5004): re-runs the tracker
on recordings' per-frame objects (pipeline.track_eval.retrack) for a few settings and prints
MOTA, IDF1, switches and the velocity error per setting.

    python -m benchmarks.tune_tracker OUT/val_2001/recording:DRIVE_2001 ... [--set key=v,key=v ...]
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np


def main(argv: list[str] | None = None) -> None:
    from pipeline.track_eval import retrack
    from pipeline.tracking import TrackerConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("pairs", nargs="+", help="RECORDING:DRIVE")
    ap.add_argument("--set", action="append", default=[], help="key=value,key=value (one setting; repeatable)")
    a = ap.parse_args(argv)
    settings = [{}] + [dict((kv.split("=")[0], type(getattr(TrackerConfig(), kv.split("=")[0]))(kv.split("=")[1]))
                            for kv in s.split(",")) for s in a.set]
    for st in settings:
        cfg = replace(TrackerConfig(), **st)
        ms = [retrack(*p.split(":"), cfg) for p in a.pairs]
        vel = [m["velocity_error_mps"].get("median", np.nan) for m in ms]
        print(f"{st or 'defaults'}: MOTA {np.mean([m['mota'] for m in ms]):.3f}  IDF1 {np.mean([m['idf1'] for m in ms]):.3f}  "
              f"switches {sum(m['num_switches'] for m in ms)} of {sum(m['num_unique_objects'] for m in ms)}  "
              f"FP {sum(m['num_false_positives'] for m in ms)}  miss {sum(m['num_misses'] for m in ms)}  "
              f"vel median {np.nanmean(vel):.3f} m/s", flush=True)


if __name__ == "__main__":
    main()
