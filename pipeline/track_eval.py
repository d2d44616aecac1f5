"""Tracking and box metrics of a run recording against a synthetic drive's exact ground truth
(called by pipeline.evaluation.evaluate_recording, which reads both and gathers the frames).

**Tracking** (CLEAR-MOT and identity metrics, py-motmetrics): per frame the hypotheses are the
recorded tracks (``/segfuse/tracks``, confirmed tracks, coasting ones included), the ground
truth the true boxes of things with >= ``MIN_VISIBLE_POINTS`` LiDAR points in the camera
image. Both are compared in the tracks' frame (world: the true boxes are moved there with the
drive's ego pose at the camera stamp; base_link for a recording without poses). A hypothesis
matches a true box when their bird's-eye-view centre distance is <= ``TRACK_MATCH_M`` (2.0 m)
and their classes are compatible (the same, or both vehicles); a hypothesis within that
distance of a true thing that is *not* visible (occluded, out of the image) and of no visible
one is a don't-care (dropped from the frame: a track coasting through an occlusion is neither
a hit nor a false positive). Reported: MOTA, MOTP (mean BEV distance of the matches, m),
IDF1, ID switches (and per 100 true tracks), fragmentations, precision, recall, mostly
tracked / lost. **Velocity error**: the BEV norm of (track velocity - true velocity) over the
matches of tracks older than ``VELOCITY_MIN_AGE_S``; the true velocity is the central
difference of the thing's true centre between the neighbouring frames (one-sided at the
ends) in the same frame.

**Boxes**: the per-frame objects matched to true boxes by pipeline.evaluation (centroid to
box, same class, Hungarian) that are cars or trucks with >= ``BOX_MIN_POINTS`` visible points:
BEV centre error, yaw error (modulo pi: a box's axis), length/width/height error, and BEV IoU
(rotated rectangles, ``cv2.rotatedRectangleIntersection``), for the amodal box
(``/segfuse/objects``) and, beside it, the box of the visible points
(``/segfuse/objects_visible``) as the baseline, on the same pairs.
"""
from __future__ import annotations

from typing import Any

import numpy as np

TRACK_MATCH_M = 2.0
VELOCITY_MIN_AGE_S = 1.0
BOX_MIN_POINTS = 50
BOX_CLASSES = ("car", "truck")
VEHICLES = ("car", "truck")


def bev_iou(c1: np.ndarray, s1: np.ndarray, yaw1: float, c2: np.ndarray, s2: np.ndarray, yaw2: float) -> float:
    """IoU of two rotated rectangles (centre xy, length/width, yaw in radians) in the BEV."""
    import cv2

    r1 = ((float(c1[0]), float(c1[1])), (float(s1[0]), float(s1[1])), float(np.degrees(yaw1)))
    r2 = ((float(c2[0]), float(c2[1])), (float(s2[0]), float(s2[1])), float(np.degrees(yaw2)))
    kind, pts = cv2.rotatedRectangleIntersection(r1, r2)
    if kind == cv2.INTERSECT_NONE or pts is None or len(pts) < 3:
        return 0.0
    inter = float(cv2.contourArea(cv2.convexHull(pts.astype(np.float32))))
    union = float(s1[0] * s1[1] + s2[0] * s2[1]) - inter
    return inter / union if union > 0 else 0.0


def axis_error_deg(a: float, b: float) -> float:
    d = (a - b + np.pi / 2) % np.pi - np.pi / 2
    return float(abs(np.degrees(d)))


def _compatible(a: str, b: str) -> bool:
    return a == b or (a in VEHICLES and b in VEHICLES)


def _stats(v: list[float]) -> dict[str, float]:
    if not v:
        return {}
    a = np.asarray(v, np.float64)
    return {"mean": float(a.mean()), "median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "n": int(a.size)}


def tracking_metrics(frames: list[dict[str, Any]], tracks: dict[int, list[dict]], names: tuple[str, ...]) -> dict:
    """``frames``: per evaluated frame in order {"stamp_ns", "boxes" (all true Box3D, base frame),
    "visible" (set of instance ids), "T_world_from_base" (4, 4) or None}; ``tracks``: camera stamp
    -> track dicts (pipeline.sinks.track_msgs.read_tracks_message)."""
    import motmetrics as mm

    frame_id = next((t[0]["frame_id"] for t in tracks.values() if t), "world")
    # true centres in the tracks' frame, per instance, for the velocities
    centres: dict[int, list[tuple[float, np.ndarray]]] = {}
    per_frame = []
    for f in frames:
        T = f["T_world_from_base"] if frame_id == "world" and f["T_world_from_base"] is not None else np.eye(4)
        c = {int(b.instance_id): T[:3, :3] @ np.asarray(b.center, np.float64) + T[:3, 3] for b in f["boxes"]}
        per_frame.append(c)
        for iid, p in c.items():
            centres.setdefault(iid, []).append((f["stamp_ns"] / 1e9, p))

    def true_velocity(iid: int, t_s: float) -> np.ndarray | None:
        seq = centres.get(iid, [])
        k = next((i for i, (t, _) in enumerate(seq) if abs(t - t_s) < 1e-6), None)
        if k is None or len(seq) < 2:
            return None
        a, b = max(k - 1, 0), min(k + 1, len(seq) - 1)
        return (seq[b][1][:2] - seq[a][1][:2]) / (seq[b][0] - seq[a][0])

    acc = mm.MOTAccumulator(auto_id=True)
    vel_err, vel_err_moving, vel_err_static = [], [], []
    dont_care = 0
    kept_by_frame: list[tuple[dict, float]] = []
    for f, c in zip(frames, per_frame):
        cls = {int(b.instance_id): names[b.class_id] for b in f["boxes"]}
        gt = sorted(i for i in f["visible"] if i in c)
        hyps = tracks.get(int(f["stamp_ns"]), [])
        others = [i for i in c if i not in f["visible"]]
        kept = []
        for h in hyps:
            hc = h["center"][:2]
            near_visible = any(np.linalg.norm(hc - c[g][:2]) <= TRACK_MATCH_M for g in gt)
            near_hidden = any(np.linalg.norm(hc - c[o][:2]) <= TRACK_MATCH_M for o in others)
            if near_hidden and not near_visible:
                dont_care += 1
                continue
            kept.append(h)
        dist = np.full((len(gt), len(kept)), np.nan)
        for i, g in enumerate(gt):
            for j, h in enumerate(kept):
                d = float(np.linalg.norm(h["center"][:2] - c[g][:2]))
                if d <= TRACK_MATCH_M and _compatible(cls[g], h["class"]):
                    dist[i, j] = d
        acc.update(gt, [h["track_id"] for h in kept], dist)
        kept_by_frame.append(({h["track_id"]: h for h in kept}, f["stamp_ns"] / 1e9))
    # velocity error over the matches
    ev = acc.mot_events
    if len(ev):
        ev = ev[ev.Type.isin(["MATCH", "SWITCH"])]
        for (fid, _), row in ev.iterrows():
            by_id, t_s = kept_by_frame[int(fid)]
            h = by_id.get(row.HId)
            if h is None or h["age_s"] < VELOCITY_MIN_AGE_S:
                continue
            v = true_velocity(int(row.OId), t_s)
            if v is None:
                continue
            e = float(np.linalg.norm(h["velocity"] - v))
            vel_err.append(e)
            (vel_err_moving if np.linalg.norm(v) > 0.5 else vel_err_static).append(e)
    mh = mm.metrics.create()
    names_m = ["mota", "motp", "idf1", "idp", "idr", "num_switches", "num_fragmentations", "precision", "recall",
               "num_unique_objects", "mostly_tracked", "mostly_lost", "num_false_positives", "num_misses",
               "num_objects", "num_predictions"]
    s = mh.compute(acc, metrics=names_m, name="all").iloc[0]
    out = {k: (float(s[k]) if k in ("mota", "motp", "idf1", "idp", "idr", "precision", "recall") else int(s[k]))
           for k in names_m}
    out["switches_per_100_tracks"] = 100.0 * out["num_switches"] / max(out["num_unique_objects"], 1)
    out["velocity_error_mps"] = _stats(vel_err)
    out["velocity_error_moving_mps"] = _stats(vel_err_moving)
    out["velocity_error_static_mps"] = _stats(vel_err_static)
    out["dont_care_hypotheses"] = dont_care
    out["frame_id"] = frame_id
    out["match_radius_m"] = TRACK_MATCH_M
    out["velocity_min_age_s"] = VELOCITY_MIN_AGE_S
    return out


def box_metrics(pairs: list[tuple[Any, Any, Any, int]], names: tuple[str, ...]) -> dict:
    """``pairs``: (true Box3D, amodal object (centre, size, yaw), visible-points box or None,
    visible true points) of matched objects."""
    rows: dict[str, dict[str, list[float]]] = {"amodal": {}, "visible_points": {}}
    n = 0
    for box, amodal, visible, count in pairs:
        if names[box.class_id] not in BOX_CLASSES or count < BOX_MIN_POINTS:
            continue
        n += 1
        for key, o in (("amodal", amodal), ("visible_points", visible)):
            if o is None:
                continue
            c, s, yaw = o
            r = rows[key]
            r.setdefault("centre_error_m", []).append(float(np.linalg.norm(c[:2] - box.center[:2])))
            r.setdefault("yaw_error_deg", []).append(axis_error_deg(yaw, box.yaw))
            for k, label in enumerate(("length", "width", "height")):
                r.setdefault(f"{label}_error_m", []).append(float(abs(s[k] - box.size[k])))
            r.setdefault("bev_iou", []).append(bev_iou(c, s, yaw, box.center, box.size, box.yaw))
    return {"pairs": n, "classes": list(BOX_CLASSES), "min_visible_points": BOX_MIN_POINTS,
            **{key: {m: _stats(v) for m, v in r.items()} for key, r in rows.items()}}


def render_tracking(m: dict[str, Any]) -> list[str]:
    t, b = m.get("tracking"), m.get("boxes")
    lines = []
    if t:
        v = t["velocity_error_mps"]
        lines += [f"  tracking ({t['frame_id']} frame, match <= {t['match_radius_m']:.1f} m BEV)",
                  f"    MOTA {t['mota']:.3f}  MOTP {t['motp']:.2f} m  IDF1 {t['idf1']:.3f}  "
                  f"ID switches {t['num_switches']} ({t['switches_per_100_tracks']:.1f} per 100 of "
                  f"{t['num_unique_objects']} true tracks)  fragmentations {t['num_fragmentations']}",
                  f"    tracks precision {100 * t['precision']:.1f} %, recall {100 * t['recall']:.1f} %  "
                  f"(per-frame objects: {100 * m['objects']['precision']:.1f} % / {100 * m['objects']['recall']:.1f} %)",
                  "    velocity error (tracks older than 1 s): " + (
                      f"median {v['median']:.2f} m/s, p90 {v['p90']:.2f} m/s over {v['n']} matches" if v else "n/a")]
    if b and b["pairs"]:
        lines.append(f"  boxes ({'/'.join(b['classes'])} with >= {b['min_visible_points']} points, {b['pairs']} matches)"
                     f"{'':4}{'amodal':>10}{'visible points':>16}")
        for key, label, unit in (("centre_error_m", "centre error median", "m"), ("yaw_error_deg", "yaw error median", "deg"),
                                 ("length_error_m", "length error median", "m"), ("width_error_m", "width error median", "m"),
                                 ("bev_iou", "BEV IoU median", "")):
            a = b["amodal"].get(key, {}).get("median", float("nan"))
            vv = b["visible_points"].get(key, {}).get("median", float("nan"))
            lines.append(f"    {label + (' (' + unit + ')' if unit else ''):<34}{a:10.3f}{vv:16.3f}")
    return lines


def retrack(recording: str, truth: str, cfg: Any) -> dict:
    """Tracking metrics of ``cfg`` (a TrackerConfig) re-run on a recording's per-frame objects
    (``/segfuse/objects``, with the drive's ego poses), without re-running the models: how the
    tracker's defaults were chosen on validation drives (benchmarks/tune_tracker.py)."""
    from pipeline.config import load_taxonomy
    from pipeline.drive.io import open_drive
    from pipeline.evaluation import MIN_VISIBLE_POINTS, read_recording
    from pipeline.tracking import Tracker
    from pipeline.types import FLAG_OUTSIDE, Object3D

    tax = load_taxonomy()
    names = tuple(tax.names)
    rec = read_recording(recording)
    tracker = Tracker(cfg, names)
    frames, tracks = [], {}
    with open_drive(truth) as drive:
        for f in drive.frames(on_error="skip"):
            cloud = rec["clouds"].get(int(f.lidar.stamp_ns))
            if cloud is None:
                continue
            cam_ns = int(f.camera.stamp_ns)
            view = (cloud["flags"] & FLAG_OUTSIDE) == 0
            ti = f.point_instance.astype(np.int64)
            ids, cnt = np.unique(ti[view & (ti > 0)], return_counts=True)
            visible = {int(i) for i, c in zip(ids, cnt) if c >= MIN_VISIBLE_POINTS}
            pose = f.T_world_from_base[int(np.argmin(np.abs(f.pose_stamps_ns - cam_ns)))]
            frames.append({"stamp_ns": cam_ns, "boxes": list(f.boxes), "visible": visible, "T_world_from_base": pose})
            objs = [Object3D(int(o[0]), tax.id(o[1]), o[2], o[5], o[3], o[4], o[6], float(np.hypot(*o[5][:2])), 0)
                    for o in rec["objects"].get(cam_ns, [])]
            out = tracker.update(objs, cam_ns, pose)
            tracks[cam_ns] = [{"track_id": t.track_id, "class": names[t.class_id], "center": t.center,
                               "velocity": t.velocity, "age_s": t.age_s, "frame_id": t.frame_id} for t in out]
    return tracking_metrics(frames, tracks, names)
