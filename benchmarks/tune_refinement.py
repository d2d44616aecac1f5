"""Instance refinement settings on validation drives (never the test drives 5001-5004): re-fuses
the frames of model-run recordings (their recorded semantic and instance masks, the drive's
LiDAR and poses) with a few FusionConfig settings and prints the per-point instance precision
and recall as ``segfuse eval`` computes them.

    python -m benchmarks.tune_refinement OUT/val_2001/recording:DRIVE_2001 ... [--set key=v,key=v ...] [--step 2]
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np


def _masks(recording: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    from rosbags.highlevel import AnyReader

    from pipeline.msgs import make_typestore

    out: dict[int, list] = {}
    with AnyReader([__import__("pathlib").Path(recording)], default_typestore=make_typestore()) as r:
        conns = [c for c in r.connections if c.topic.endswith("/semantic") or c.topic.endswith("/instance")]
        for c, _, raw in r.messages(connections=conns):
            m = r.deserialize(raw, c.msgtype)
            stamp = int(m.header.stamp.sec) * 1_000_000_000 + int(m.header.stamp.nanosec)
            a = np.frombuffer(bytes(m.data), np.uint8 if m.encoding == "mono8" else "<u2").reshape(m.height, m.width)
            out.setdefault(stamp, [None, None])[0 if m.encoding == "mono8" else 1] = a.copy()
    return {k: tuple(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    from calibration.rig import rig_from_drive_calib
    from pipeline.config import load_taxonomy
    from pipeline.drive.io import open_drive
    from pipeline.evaluation import instance_match_points
    from pipeline.fusion.config import FusionConfig
    from pipeline.fusion.frame import CameraMasks, Poses, fuse_frame
    from pipeline.fusion.label import InstanceMap
    from pipeline.types import FLAG_OUTSIDE

    ap = argparse.ArgumentParser()
    ap.add_argument("pairs", nargs="+", help="RECORDING:DRIVE")
    ap.add_argument("--set", action="append", default=[], help="key=value,key=value (one setting; repeatable)")
    ap.add_argument("--step", type=int, default=2, help="every STEP-th frame")
    a = ap.parse_args(argv)
    tax = load_taxonomy()
    d0 = FusionConfig()

    def conv(k: str, v: str):
        t = type(getattr(d0, k))
        return (v.lower() in ("1", "true")) if t is bool else t(v)

    settings = [{}] + [dict((kv.split("=")[0], conv(*kv.split("="))) for kv in s.split(",")) for s in a.set]
    totals = {i: np.zeros(3) for i in range(len(settings))}
    for pair in a.pairs:
        rec, drv = pair.split(":")
        masks = _masks(rec)
        with open_drive(drv) as drive:
            rig = rig_from_drive_calib(drive.calib)
            cam = rig.cameras[0].name
            for f in drive.frames():
                if f.index % a.step:
                    continue
                sem, inst = masks.get(int(f.camera.stamp_ns), (None, None))
                if sem is None:
                    continue
                cm = CameraMasks(cam, f.camera.stamp_ns, sem, None if inst is None else InstanceMap.from_id_image(inst, sem))
                for i, st in enumerate(settings):
                    r = fuse_frame(f.lidar, [cm], rig, replace(d0, **st), tax, Poses(f.pose_stamps_ns, f.T_world_from_base))
                    view = (r.cloud.flags & FLAG_OUTSIDE) == 0
                    true = f.point_instance.astype(np.int64)
                    hit, n = instance_match_points(r.cloud.instance_id.astype(np.int64), np.where(view, true, 0))
                    totals[i] += (hit, n, int(((true > 0) & view).sum()))
    for i, st in enumerate(settings):
        hit, n, t = totals[i]
        print(f"{st or 'defaults'}: instance precision {100 * hit / max(n, 1):.2f} %, recall {100 * hit / max(t, 1):.2f} %",
              flush=True)


if __name__ == "__main__":
    main()
