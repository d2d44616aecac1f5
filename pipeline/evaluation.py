"""``segfuse eval``: fusion metrics of a run recording against the drive's ground truth.

Frames are matched by the LiDAR sweep stamp (the recorder keeps the input stamps and the
points in the input's order). Metrics:

- **per-point class accuracy**: of the points the run labelled (class != ignore) whose true
  class is known, the fraction labelled with the true class; plus the coverage (labelled /
  points inside the camera image) and the accuracy per true class;
- **per-point instance precision / recall**: run instances are matched one-to-one to true
  instances by point IoU (Hungarian, IoU >= 0.5); precision = points whose run instance is
  matched to their true instance / points with a run instance; recall = the same / points of
  a true instance inside the camera image;
- **tracking and boxes**: pipeline.track_eval (CLEAR-MOT, IDF1, velocity error; amodal and
  visible-points box errors and BEV IoU);
- **object centroids**: run objects (``/segfuse/objects``, base frame at the camera time; the
  hypothesis pose is the centroid of the object's points) matched one-to-one to the true boxes
  by the distance from the centroid to the box, 0 inside (Hungarian, <= ``MAX_MATCH_M``, same
  class). A LiDAR sees only the near side of a thing, so the centroid, not the box of the
  visible points, is what can be held to the true box. Reported: centroid-to-box distance
  (median, p90, share within 0.3 m), the BEV box centre's distance to the true centre (for
  information), object precision, and recall over the true objects the camera sees
  (>= ``MIN_VISIBLE_POINTS`` in-image points).

Real datasets (``--truth`` a KITTI object folder or a nuScenes keyframe folder) label 3D
boxes only: the truth of a point is the box it lies in (``pipeline.datasets.boxes``), so the
class accuracy counts only points inside labelled boxes, and instance recall is over the points
inside the labelled boxes that lie in a camera's view.

Model metrics (DeepLab IoU, Mask R-CNN mask AP against the drive's ground-truth images) are
``engines.evaluation`` (``segfuse eval --drive DRIVE`` without ``--truth``).
"""
from __future__ import annotations

import json
import logging
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputDataError

log = logging.getLogger(__name__)

MAX_MATCH_M = 1.0          # centroid-to-true-box distance for an object to match a true box
MIN_VISIBLE_POINTS = 5
INSTANCE_IOU = 0.5


def read_recording(path: str | Path) -> dict[str, Any]:
    """{"clouds": {lidar_stamp: structured points},
    "objects": {camera_stamp: [(id, class, score, box centre, size, centroid)]},
    "status": [dict], "run_info": dict} from a segfuse run recording."""
    from pipeline.drive.rosbag import cloud_fields, open_bag
    from pipeline.sinks.recorder import TOPIC_OBJECTS, TOPIC_POINTS, TOPIC_RUN_INFO, TOPIC_STATUS
    from pipeline.sinks.track_msgs import TOPIC_OBJECTS_VISIBLE, TOPIC_TRACKS, read_tracks_message

    path = Path(path)
    if not path.exists():
        raise InputDataError("recording not found", path=path)
    out: dict[str, Any] = {"clouds": {}, "objects": {}, "objects_visible": {}, "tracks": {}, "status": [],
                           "run_info": {}}
    try:
        with closing(open_bag(path)) as reader:
            topics = {c.topic for c in reader.connections}
            if TOPIC_POINTS not in topics:
                raise InputDataError(f"holds no {TOPIC_POINTS}: not a segfuse run recording (run 'segfuse run' on the "
                                     "drive first; for model metrics on a drive, leave out --truth)", path=path)
            conns = [c for c in reader.connections if c.topic in (TOPIC_POINTS, TOPIC_OBJECTS, TOPIC_STATUS,
                                                                 TOPIC_RUN_INFO, TOPIC_OBJECTS_VISIBLE, TOPIC_TRACKS)]
            for conn, _, raw in reader.messages(connections=conns):
                msg = reader.deserialize(raw, conn.msgtype)
                if conn.topic == TOPIC_POINTS:
                    stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
                    out["clouds"][stamp] = np.array(cloud_fields(msg, path, conn.topic))
                elif conn.topic in (TOPIC_OBJECTS, TOPIC_OBJECTS_VISIBLE):
                    stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
                    objs = []
                    for d in msg.detections:
                        c, s = d.bbox.center.position, d.bbox.size
                        q = d.bbox.center.orientation
                        hyp = d.results[0].hypothesis if d.results else None
                        m = d.results[0].pose.pose.position if d.results else c
                        objs.append((d.id, hyp.class_id if hyp else "", float(hyp.score) if hyp else 0.0,
                                     np.array([c.x, c.y, c.z]), np.array([s.x, s.y, s.z]), np.array([m.x, m.y, m.z]),
                                     2.0 * float(np.arctan2(q.z, q.w))))
                    out["objects" if conn.topic == TOPIC_OBJECTS else "objects_visible"][stamp] = objs
                elif conn.topic == TOPIC_TRACKS:
                    stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
                    out["tracks"][stamp] = read_tracks_message(msg)
                elif conn.topic == TOPIC_STATUS:               # segfuse_msgs/FrameStatus
                    out["status"].append({k: getattr(msg, k) for k in (
                        "frame", "camera_seq", "camera_stamp_ns", "lidar_stamp_ns", "lidar_missing", "fused",
                        "ego_motion", "frames_dropped")})
                else:
                    out["run_info"] = json.loads(msg.data)
    except InputDataError:
        raise
    except Exception as exc:
        if type(exc).__module__.startswith("rosbags"):
            raise InputDataError(f"cannot read the recording: {exc}", path=path) from exc
        raise
    return out


def _hungarian(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.optimize import linear_sum_assignment

    if cost.size == 0:
        return np.zeros(0, int), np.zeros(0, int)
    return linear_sum_assignment(cost)


def instance_match_points(pred: np.ndarray, true: np.ndarray) -> tuple[int, int]:
    """(points whose predicted instance is matched to their true instance, of points with a
    predicted instance). pred: (N,) int, -1 none; true: (N,) int, 0 none."""
    has_pred = pred >= 0
    n_pred = int(has_pred.sum())
    if not n_pred:
        return 0, 0
    p_ids, p_inv = np.unique(pred[has_pred], return_inverse=True)
    t_all = true[has_pred]
    t_ids = np.unique(true[true > 0])
    if not t_ids.size:
        return 0, n_pred
    # overlap[i, j] = points of predicted instance i whose true instance is t_ids[j]
    t_idx = np.searchsorted(t_ids, t_all)
    ok = (t_idx < t_ids.size) & (t_ids[np.minimum(t_idx, t_ids.size - 1)] == t_all)
    overlap = np.zeros((p_ids.size, t_ids.size), np.int64)
    np.add.at(overlap, (p_inv[ok], t_idx[ok]), 1)
    p_size = np.bincount(p_inv, minlength=p_ids.size)
    t_size = np.array([(true == t).sum() for t in t_ids])
    iou = overlap / np.maximum(p_size[:, None] + t_size[None, :] - overlap, 1)
    rows, cols = _hungarian(-iou)
    good = iou[rows, cols] >= INSTANCE_IOU
    return int(overlap[rows[good], cols[good]].sum()), n_pred


def evaluate_recording(recording: str | Path, truth: str | Path) -> dict[str, Any]:
    """Score ``recording`` (segfuse run output) against the ground truth of the ``truth`` drive."""
    from pipeline.config import load_taxonomy
    from pipeline.drive.io import open_drive
    from pipeline.types import FLAG_OUTSIDE

    tax = load_taxonomy()
    rec = read_recording(recording)
    nc = tax.num_classes
    correct = labelled = in_view = 0
    per_class_hit = np.zeros(nc, np.int64)
    per_class_n = np.zeros(nc, np.int64)
    inst_hit = inst_pred = inst_true = 0
    obj_err_bev, obj_err_3d, obj_err_centre = [], [], []
    obj_pred = obj_true_visible = obj_matched = 0
    frames = missing = 0
    track_frames: list[dict[str, Any]] = []     # for pipeline.track_eval
    box_pairs: list[tuple[Any, Any, Any, int]] = []
    with _open_truth(truth) as drive:
        for f in drive.frames(on_error="skip"):
            cloud = rec["clouds"].get(int(f.lidar.stamp_ns))
            if cloud is None:
                missing += 1
                continue
            if f.point_class is None:
                raise InputDataError(f"frame {f.index} has no per-point ground truth", path=Path(truth),
                                     field="point_class")
            if cloud.shape[0] != f.point_class.shape[0]:
                raise InputDataError(f"frame {f.index}: the recording has {cloud.shape[0]} points, the drive "
                                     f"{f.point_class.shape[0]}", path=Path(recording), field="/segfuse/points")
            frames += 1
            pred = cloud["class_id"].astype(np.int64)
            gt = f.point_class.astype(np.int64)
            view = (cloud["flags"] & FLAG_OUTSIDE) == 0
            lab = (pred != tax.ignore_id) & (gt < nc)
            hit = lab & (pred == gt)
            correct += int(hit.sum())
            labelled += int(lab.sum())
            in_view += int((view & (gt < nc)).sum())
            per_class_n += np.bincount(gt[lab], minlength=nc)[:nc]
            per_class_hit += np.bincount(gt[hit], minlength=nc)[:nc]
            # instances (points)
            true_inst = f.point_instance.astype(np.int64)
            h, n = instance_match_points(cloud["instance_id"].astype(np.int64), np.where(view, true_inst, 0))
            inst_hit += h
            inst_pred += n
            inst_true += int(((true_inst > 0) & view).sum())
            # objects
            objs = rec["objects"].get(int(f.camera.stamp_ns), [])
            counts = dict(zip(*(a.tolist() for a in np.unique(true_inst[view & (true_inst > 0)], return_counts=True))))
            visible = {int(i) for i, c in counts.items() if c >= MIN_VISIBLE_POINTS}
            boxes = [b for b in f.boxes if int(b.instance_id) in visible]
            cam_ns = int(f.camera.stamp_ns)
            ps = getattr(f, "pose_stamps_ns", None)
            pose = f.T_world_from_base[int(np.argmin(np.abs(ps - cam_ns)))] if ps is not None and len(ps) else None
            track_frames.append({"stamp_ns": cam_ns, "boxes": list(f.boxes), "visible": visible,
                                 "T_world_from_base": pose})
            vis_objs = {o[0]: o for o in rec["objects_visible"].get(cam_ns, [])}
            obj_pred += len(objs)
            obj_true_visible += len(boxes)
            if objs and boxes:
                # an object's points see only the near side of a thing: its centroid is judged by its
                # distance to the true box (0 inside), and objects are matched one-to-one on that
                cost = np.array([[centroid_to_box_m(o[5], b) for b in boxes] for o in objs])
                same = np.array([[o[1] == tax.names[b.class_id] for b in boxes] for o in objs])
                cost = np.where(same & (cost <= MAX_MATCH_M), cost, 1e6)
                rows, cols = _hungarian(cost)
                for r, c in zip(rows, cols):
                    if cost[r, c] < 1e6:
                        obj_matched += 1
                        obj_err_3d.append(float(cost[r, c]))
                        obj_err_bev.append(float(np.linalg.norm(objs[r][3][:2] - boxes[c].center[:2])))
                        obj_err_centre.append(float(np.linalg.norm(objs[r][5] - boxes[c].center)))
                        o, vo = objs[r], vis_objs.get(objs[r][0])
                        box_pairs.append((boxes[c], (o[3], o[4], o[6]), None if vo is None else (vo[3], vo[4], vo[6]),
                                          int(counts.get(int(boxes[c].instance_id), 0))))
    if not frames:
        raise InputDataError("no frame of the recording matches a LiDAR sweep of the drive (a recording of "
                             "another drive?)", path=Path(recording))
    camera_only = sum(1 for s in rec["status"] if s.get("lidar_missing"))
    from pipeline.track_eval import box_metrics, tracking_metrics

    names = tuple(tax.names)
    extra = {"boxes": box_metrics(box_pairs, names)}
    if rec["tracks"]:
        extra["tracking"] = tracking_metrics(track_frames, rec["tracks"], names)
    return {**extra,
        "recording": str(recording), "truth": str(truth),
        "masks": rec["run_info"].get("masks_label", rec["run_info"].get("masks", "?")),
        "oracle": bool(rec["run_info"].get("oracle", False)),
        "frames": {"evaluated": frames, "truth_frames_without_recorded_cloud": missing,
                   "recorded_camera_only": camera_only},
        "points": {"class_accuracy": correct / labelled if labelled else 0.0,
                   "labelled": labelled, "in_view": in_view, "coverage": labelled / in_view if in_view else 0.0,
                   "class_accuracy_by_class": {tax.names[c]: float(per_class_hit[c] / per_class_n[c])
                                               for c in range(nc) if per_class_n[c]}},
        "instances": {"precision": inst_hit / inst_pred if inst_pred else 0.0,
                      "recall": inst_hit / inst_true if inst_true else 0.0,
                      "points_with_instance": inst_pred, "true_instance_points_in_view": inst_true},
        "objects": {"predicted": obj_pred, "true_visible": obj_true_visible, "matched": obj_matched,
                    "precision": obj_matched / obj_pred if obj_pred else 0.0,
                    "recall": obj_matched / obj_true_visible if obj_true_visible else 0.0,
                    "centroid_to_box_m": _stats(obj_err_3d),
                    "centroid_within_0_3m": float(np.mean(np.array(obj_err_3d) <= 0.3)) if obj_err_3d else 0.0,
                    "bev_box_centre_to_true_centre_m": _stats(obj_err_bev),
                    "centroid_to_true_centre_m": _stats(obj_err_centre),
                    "match_radius_m": MAX_MATCH_M},
    }


def _open_truth(truth: str | Path):
    """A drive with per-point ground truth, or a real dataset folder (KITTI object, nuScenes)
    whose labelled 3D boxes give the truth (pipeline.datasets.readers.BoxTruth)."""
    from pipeline.datasets.readers import BoxTruth, is_kitti_object, is_nuscenes
    from pipeline.drive.io import open_drive

    p = Path(truth)
    if p.is_dir() and (is_kitti_object(p) or is_nuscenes(p)):
        return BoxTruth(p)
    return open_drive(truth)


def centroid_to_box_m(centroid: np.ndarray, box) -> float:
    """Distance from a point to a ground-truth box (centre, size l/w/h, yaw about z); 0 inside."""
    q = np.asarray(centroid, np.float64) - box.center
    c, s = np.cos(-box.yaw), np.sin(-box.yaw)
    local = np.array([c * q[0] - s * q[1], s * q[0] + c * q[1], q[2]])
    return float(np.linalg.norm(np.maximum(np.abs(local) - np.asarray(box.size) / 2, 0.0)))


def _stats(v: list[float]) -> dict[str, float]:
    if not v:
        return {}
    a = np.asarray(v)
    return {"mean": float(a.mean()), "median": float(np.median(a)), "p90": float(np.percentile(a, 90))}


def render_table(m: dict[str, Any]) -> str:
    p, i, o = m["points"], m["instances"], m["objects"]
    cb = o["centroid_to_box_m"]
    cc, bb = o.get("centroid_to_true_centre_m", {}), o.get("bev_box_centre_to_true_centre_m", {})
    rows = [
        ("frames evaluated", f"{m['frames']['evaluated']}"),
        ("point class accuracy", f"{100 * p['class_accuracy']:.2f} %  of {p['labelled']:,} labelled points"),
        ("point coverage", f"{100 * p['coverage']:.1f} %  of {p['in_view']:,} points in the image"),
        ("instance precision", f"{100 * i['precision']:.2f} %  (points)"),
        ("instance recall", f"{100 * i['recall']:.2f} %  (points in the image)"),
        ("objects", f"{o['matched']} matched of {o['predicted']} found, {o['true_visible']} visible "
                    f"(precision {100 * o['precision']:.1f} %, recall {100 * o['recall']:.1f} %)"),
        ("centroid to true box", f"median {cb['median']:.2f} m, p90 {cb['p90']:.2f} m, "
                                 f"{100 * o['centroid_within_0_3m']:.0f} % within 0.3 m" if cb else "n/a"),
        ("centroid to true centre", f"median {cc['median']:.2f} m, p90 {cc['p90']:.2f} m (3D)" if cc else "n/a"),
        ("BEV box to true centre", f"median {bb['median']:.2f} m, p90 {bb['p90']:.2f} m" if bb else "n/a"),
    ]
    lines = ["", f"segfuse eval: {m['recording']} against {m['truth']}", f"  masks: {m['masks']}"]
    lines += [f"  {k:<25}{v}" for k, v in rows]
    from pipeline.track_eval import render_tracking

    lines += render_tracking(m)
    if m["oracle"]:
        lines.append("  NOTE: the run used oracle masks (ground truth or labelled boxes): these numbers measure fusion, "
                     "not models")
    return "\n".join(lines)
