"""The output schema: every topic segfuse writes, declared once, for every sink.

The recorder (rosbag2/MCAP), the Zenoh publisher, the Foxglove live view and ``segfuse listen``
all take their topic names, message types, frames, QoS and stamps from :data:`TOPICS` through
:func:`topics_for`, and the messages themselves from one builder
(:meth:`pipeline.sinks.messages.RosMessages.frame_messages`), so a program written against a
recording works unchanged on the live stream. ``docs/publishing.md``'s topic table is generated
from here (``python -m pipeline.sinks.schema --write-docs``; ``tests/test_schema.py`` fails when
the docs drift).

Stamps: every header stamp (and every recording's log time) is the *sensor* time of the data:
the camera's exposure stamp for per-frame results, the sweep's start stamp for the cloud. A
replayed drive keeps the drive's recorded times and, on every sink, publishes ``/clock``
(rosgraph_msgs/Clock = the frame's camera stamp) so ROS 2 nodes started with
``use_sim_time:=true`` follow the replay; a live source publishes no ``/clock`` (its stamps are
the machine's own time). Nothing in the recording depends on the wall clock, so a replay of the
same drive records the same bytes; the live sinks fill FrameStatus' wall-clock fields
(``publish_stamp_ns``, ``pipeline_latency_ms``), the recorder leaves them 0 / -1.

Pure declarations: no heavy imports.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASE_FRAME = "base_link"
WORLD_FRAME = "world"

# QoS classes: how each sink carries a topic
#   latched: once at the first frame; recorder: transient-local offered QoS; Zenoh: announced
#            transient local, kept in an advanced publisher's cache for late subscribers;
#            live view: re-sent to every new subscriber
#   stream:  every frame; Zenoh `qos: latest` drops a sample rather than wait for a slow reader
QOS_CLASSES = ("latched", "stream")


@dataclass(frozen=True)
class TopicSpec:
    name: str                  # may hold {cam}: the camera id
    msgtype: str               # ROS 2 type, pkg/msg/Name
    frame: str                 # header.frame_id ("camera optical", "LiDAR", base_link, world, "-")
    qos: str                   # one of QOS_CLASSES
    stamp: str                 # which sensor time the header (and the log time) carries
    when: str                  # "always" or the condition under which the topic exists
    content: str

    def topic(self, camera_id: str) -> str:
        return self.name.format(cam=camera_id)


# The one table. Order = the order messages of a frame are written and publishers are declared.
TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("/tf_static", "tf2_msgs/msg/TFMessage", BASE_FRAME, "latched", "first frame",
              "always", "extrinsics: base_link -> camera optical frame, base_link -> LiDAR frame"),
    TopicSpec("/tf", "tf2_msgs/msg/TFMessage", WORLD_FRAME, "stream", "camera",
              "the input has ego poses", "ego pose world -> base_link at the camera's exposure"),
    TopicSpec("/clock", "rosgraph_msgs/msg/Clock", "-", "stream", "camera",
              "replay policy", "the replay's clock (= the frame's camera stamp) for use_sim_time"),
    TopicSpec("/segfuse/run_info", "std_msgs/msg/String", "-", "latched", "first frame",
              "always", "JSON: mask provider, taxonomy, input, camera, LiDAR, recording format"),
    TopicSpec("/segfuse/{cam}/camera_info", "sensor_msgs/msg/CameraInfo", "camera optical", "stream", "camera",
              "the rig has the camera", "intrinsics, distortion, projection of the camera the masks belong to"),
    TopicSpec("/segfuse/{cam}/image_raw", "sensor_msgs/msg/Image", "camera optical", "stream", "camera",
              "camera_image: true", "the camera image, bgr8"),
    TopicSpec("/segfuse/{cam}/semantic", "sensor_msgs/msg/Image", "camera optical", "stream", "camera",
              "always", "class ids, mono8, raw (never compressed)"),
    TopicSpec("/segfuse/{cam}/instance", "sensor_msgs/msg/Image", "camera optical", "stream", "camera",
              "always", "instance ids, mono16, 0 none"),
    TopicSpec("/segfuse/points", "sensor_msgs/msg/PointCloud2", "LiDAR", "stream", "sweep start",
              "fused frames", "the fused cloud: x, y, z, intensity (f32), class_id (u8), flags (u8), "
              "instance_id (i32, -1 none), score (f32)"),
    TopicSpec("/segfuse/objects", "vision_msgs/msg/Detection3DArray", BASE_FRAME, "stream", "camera",
              "fused frames", "3D objects: id = instance, class name + score, hypothesis pose = centroid "
              "of the points, bbox = the amodal box (L-shape fit + class size prior)"),
    TopicSpec("/segfuse/objects_visible", "vision_msgs/msg/Detection3DArray", BASE_FRAME, "stream", "camera",
              "fused frames", "the same objects with bbox = the box of their visible points (a baseline)"),
    TopicSpec("/segfuse/tracks", "vision_msgs/msg/Detection3DArray", "world (base_link without poses)", "stream",
              "camera", "fused frames", "tracks: id = track id, smoothed box, class + score with the position "
              "covariance, velocity and its covariance, age, hits, misses, last seen (pipeline/sinks/track_msgs.py)"),
    TopicSpec("/segfuse/lanes", "segfuse_msgs/msg/LaneBoundaryArray", BASE_FRAME, "stream", "camera",
              "fused frames", "lane lines as polylines (each cubic sampled every metre)"),
    TopicSpec("/segfuse/lane_lines", "segfuse_msgs/msg/LaneLineArray", BASE_FRAME, "stream", "camera",
              "fused frames", "lane lines as cubics y(x) = c0 + c1 x + c2 x^2 + c3 x^3, valid x range, "
              "type, confidence"),
    TopicSpec("/segfuse/markers", "visualization_msgs/msg/MarkerArray", BASE_FRAME, "stream", "camera",
              "fused frames", "boxes, labels, lane strips (DELETEALL first) for 3D panels"),
    TopicSpec("/segfuse/status", "segfuse_msgs/msg/FrameStatus", "camera optical", "stream", "camera",
              "always", "frame, camera seq, camera/LiDAR stamps, lidar_missing, fused, ego_motion, frames "
              "dropped; live sinks only: publish wall-clock stamp, pipeline latency"),
)

BY_NAME = {t.name: t for t in TOPICS}

# Live-view-only channels: Foxglove's own schemas where they render better than the ROS ones
# (pipeline.sinks.liveview). Each shows a ROS topic above, drawn for a person.
LIVE_VIEW_EXTRAS: tuple[TopicSpec, ...] = (
    TopicSpec("/live/scene", "foxglove.SceneUpdate", BASE_FRAME, "stream", "camera", "fused frames",
              "3D boxes with labels (of /segfuse/objects) and lane strips"),
    TopicSpec("/live/points", "foxglove.PointCloud", "LiDAR", "stream", "sweep start", "fused frames",
              "the fused cloud coloured by class (of /segfuse/points)"),
    TopicSpec("/live/{cam}/blended", "foxglove.RawImage", "camera optical", "stream", "camera", "always",
              "the camera image with the semantic mask blended in"),
    TopicSpec("/live/transforms", "foxglove.FrameTransforms", BASE_FRAME, "stream", "camera", "always",
              "/tf_static and /tf as Foxglove transforms"),
)


def topics_for(camera_id: str, *, has_camera: bool = True, has_lidar: bool = True, has_poses: bool = False,
               replay: bool = True, camera_image: bool = False) -> dict[str, TopicSpec]:
    """The topics a run writes, in order: ``{topic name: spec}``. Every sink of a run calls this
    with the same flags, so they all carry the same set."""
    keep = {"always": True, "the input has ego poses": has_poses, "replay policy": replay,
            "the rig has the camera": has_camera, "camera_image: true": camera_image, "fused frames": has_lidar}
    return {t.topic(camera_id): t for t in TOPICS if keep[t.when]}


def run_flags(*, camera_id: str, cam: Any, lidar: Any, has_poses: bool, policy: str,
              camera_image: bool = False) -> dict[str, Any]:
    """The :func:`topics_for` keyword arguments of a run (the runner builds this once for every sink)."""
    return {"has_camera": cam is not None, "has_lidar": lidar is not None, "has_poses": bool(has_poses),
            "replay": policy == "replay", "camera_image": bool(camera_image)}


def ros_types() -> list[str]:
    return sorted({t.msgtype for t in TOPICS})


# --- docs ------------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "publishing.md"
BEGIN, END = "<!-- schema table: generated by python -m pipeline.sinks.schema --write-docs -->", "<!-- end schema table -->"


def markdown_table() -> str:
    rows = ["| topic | type | frame_id | QoS | stamp | present when | content |", "|---|---|---|---|---|---|---|"]
    for t in TOPICS:
        rows.append(f"| `{t.name}` | `{t.msgtype}` | {t.frame} | {t.qos} | {t.stamp} | {t.when} | {t.content} |")
    rows += ["", "Live view only (Foxglove schemas, `pipeline/sinks/liveview.py`):", "",
             "| channel | schema | frame_id | content |", "|---|---|---|---|"]
    for t in LIVE_VIEW_EXTRAS:
        rows.append(f"| `{t.name}` | `{t.msgtype}` | {t.frame} | {t.content} |")
    return "\n".join(rows)


def docs_block() -> str:
    return f"{BEGIN}\n{markdown_table()}\n{END}"


def docs_table_in(text: str) -> str | None:
    m = re.search(re.escape(BEGIN) + r".*?" + re.escape(END), text, re.S)
    return None if m is None else m.group(0)


def write_docs(path: Path = DOCS) -> bool:
    text = path.read_text()
    old = docs_table_in(text)
    if old is None:
        raise SystemExit(f"{path}: no schema table markers ({BEGIN!r} ... {END!r})")
    new = text.replace(old, docs_block())
    if new != text:
        path.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.sinks.schema", description=__doc__.splitlines()[0])
    p.add_argument("--write-docs", action="store_true", help=f"rewrite the table in {DOCS}")
    args = p.parse_args(argv)
    if args.write_docs:
        changed = write_docs()
        sys.stdout.write(f"{DOCS}: {'updated' if changed else 'already up to date'}\n")
    else:
        sys.stdout.write(markdown_table() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
