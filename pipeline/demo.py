"""`segfuse demo`: the main job on the bundled default drive.

Generates the demo drive if it is absent (`segfuse sim`, rosbag2/MCAP), replays it, fuses
every LiDAR sweep with the camera masks, and writes an overlay video, a per-frame overlay
image and a JSON summary to the output folder.

Masks: until the trained default models are committed, the demo fuses the drive's
ground-truth masks (an oracle), and says so in its output. The fusion, ego-motion
compensation, objects and lanes are the real code paths.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate (if absent) and replay the bundled demo drive through fusion",
                       description="The main job on the bundled default drive: generate it if absent, replay "
                                   "it, fuse camera masks with LiDAR, write overlays and a summary.")
    p.add_argument("--drive", default="data/demo_drive", help="demo drive directory (generated if absent)")
    p.add_argument("--frames", type=int, default=30, help="frames to generate when the drive is absent")
    p.add_argument("--seed", type=int, default=7, help="seed of the generated drive")
    p.add_argument("--out", default="out/demo", help="output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    summary = run_demo(Path(args.drive), Path(args.out), frames=args.frames, seed=args.seed)
    print(render_summary(summary))
    return 0


def run_demo(drive_path: Path, out: Path, *, frames: int = 30, seed: int = 7) -> dict:
    import cv2
    from tqdm import tqdm

    from calibration.rig import rig_from_drive_calib
    from pipeline.config import load_taxonomy
    from pipeline.drive.io import open_drive
    from pipeline.fusion.config import FusionConfig
    from pipeline.fusion.frame import CameraMasks, Poses, fuse_frame
    from pipeline.fusion.label import InstanceMap
    from pipeline.sim.simulate import simulate

    if not drive_path.exists():
        log.info("demo drive %s absent: generating %d frames (seed %d)", drive_path, frames, seed)
        print(simulate(drive_path, frames=frames, seed=seed, fmt="rosbag2").render())
    taxonomy = load_taxonomy()
    cfg = FusionConfig()
    out.mkdir(parents=True, exist_ok=True)
    drive = open_drive(drive_path)
    rig = rig_from_drive_calib(drive.calib)
    camera = rig.cameras[0]
    video = None
    stats = {"frames": 0, "points": 0, "labelled": 0, "correct": 0, "objects": 0, "lanes": 0,
             "fuse_ms": [], "read_ms": []}
    t_read = time.perf_counter()
    for f in tqdm(drive.frames(on_error="skip"), total=len(drive), desc="demo", unit="frame"):
        stats["read_ms"].append((time.perf_counter() - t_read) * 1e3)
        if f.semantic is None:
            log.warning("frame %d has no masks to fuse; skipped", f.index)
            continue
        masks = CameraMasks(camera.name, f.camera.stamp_ns, f.semantic, InstanceMap.from_id_image(f.instance, f.semantic))
        t0 = time.perf_counter()
        result = fuse_frame(f.lidar, [masks], rig, cfg, taxonomy, Poses(f.pose_stamps_ns, f.T_world_from_base))
        stats["fuse_ms"].append((time.perf_counter() - t0) * 1e3)
        c = result.cloud
        lab = c.class_id != taxonomy.ignore_id
        stats["frames"] += 1
        stats["points"] += len(c.points)
        stats["labelled"] += int(lab.sum())
        if f.point_class is not None:
            stats["correct"] += int((c.class_id[lab] == f.point_class[lab]).sum())
        stats["objects"] += len(result.objects)
        stats["lanes"] += len(result.lanes)
        img = draw_frame(f.camera.image, result, camera, taxonomy)
        if video is None:
            video = cv2.VideoWriter(str(out / "overlay.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0,
                                    (img.shape[1], img.shape[0]))
            cv2.imwrite(str(out / "overlay_first.png"), img)
        video.write(img)
        t_read = time.perf_counter()
    if video is not None:
        video.release()
    summary = {
        "drive": str(drive_path), "out": str(out), "frames": stats["frames"], "skipped": drive.num_skipped,
        "masks": "ground truth (oracle): trained models are not committed yet",
        "points_per_frame": stats["points"] / max(stats["frames"], 1),
        "labelled_per_frame": stats["labelled"] / max(stats["frames"], 1),
        "label_accuracy_vs_lidar_truth": stats["correct"] / max(stats["labelled"], 1),
        "objects_per_frame": stats["objects"] / max(stats["frames"], 1),
        "lanes_per_frame": stats["lanes"] / max(stats["frames"], 1),
        "latency_ms": {k: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))}
                       for k, v in (("read", stats["read_ms"]), ("fuse", stats["fuse_ms"])) if v},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def draw_frame(image: np.ndarray, result, camera, taxonomy) -> np.ndarray:
    """Camera frame with LiDAR points coloured by fused class and objects labelled with range."""
    import cv2

    from calibration.projection import project_lidar
    from pipeline.overlay import draw_points

    T_cam_from_base = np.linalg.inv(camera.T_base_from_cam)
    pts_cam = result.points_base @ T_cam_from_base[:3, :3].T + T_cam_from_base[:3, 3]
    proj = project_lidar(pts_cam.astype(np.float32), np.eye(4), camera.model, min_depth_m=1.0)
    idx = proj.index
    order = np.argsort(-proj.depth_m[idx])
    labelled = result.cloud.class_id[idx[order]]
    colors = taxonomy.color_lut()[labelled]
    colors[labelled == taxonomy.ignore_id] = (0, 0, 0)
    img = draw_points(image, proj.pixels[order], colors, radius=1)
    for o in result.objects:
        c = (T_cam_from_base[:3, :3] @ o.centroid + T_cam_from_base[:3, 3]).reshape(1, 3).astype(np.float32)
        p = project_lidar(c, np.eye(4), camera.model, min_depth_m=1.0)
        if p.count:
            u, v = p.pixels[0]
            text = f"{taxonomy.names[o.class_id]} {o.range_m:.0f}m"
            cv2.putText(img, text, (int(u) - 30, int(v) - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(img, text, (int(u) - 30, int(v) - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def render_summary(s: dict) -> str:
    lat = s.get("latency_ms", {})
    lines = [
        "", f"segfuse demo: {s['frames']} frames of {s['drive']} ({s['skipped']} skipped)",
        f"  masks:              {s['masks']}",
        f"  LiDAR points/frame: {s['points_per_frame']:,.0f}, labelled {s['labelled_per_frame']:,.0f}",
        f"  label accuracy:     {100 * s['label_accuracy_vs_lidar_truth']:.2f}% of labelled points agree with the LiDAR's own truth",
        f"  objects/frame:      {s['objects_per_frame']:.1f}   lane lines/frame: {s['lanes_per_frame']:.1f}",
    ]
    for k, v in lat.items():
        lines.append(f"  {k + ' latency:':<20}p50 {v['p50']:.1f} ms  p99 {v['p99']:.1f} ms")
    lines += [f"  look at:            {s['out']}/overlay.mp4, {s['out']}/overlay_first.png, {s['out']}/summary.json"]
    return "\n".join(lines)
