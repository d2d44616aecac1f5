"""The output schema (pipeline.sinks.schema): the docs table is generated from it, every sink
takes its topics from it, and every type's RIHS01 hash equals the one ROS 2's own generator
(``rosidl_generator_type_description``, from the ros-* wheels) computes."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROS_SHARE = Path(sys.prefix) / "share"           # the ros-* wheels install their interfaces here
TF_MESSAGE_MSG = "geometry_msgs/TransformStamped[] transforms\n"     # tf2_msgs/msg/TFMessage (not in the wheels)


def test_docs_table_is_the_schema():
    from pipeline.sinks.schema import DOCS, docs_block, docs_table_in

    table = docs_table_in(DOCS.read_text())
    assert table is not None, "docs/publishing.md lost its schema table markers"
    assert table == docs_block(), "docs/publishing.md drifted: run python -m pipeline.sinks.schema --write-docs"


def test_every_sink_takes_the_schema_topics():
    from pipeline.config import load_taxonomy
    from pipeline.sinks.messages import RosMessages
    from pipeline.sinks.schema import TOPICS, topics_for

    names = [t.name for t in TOPICS]
    assert len(names) == len(set(names))
    full = topics_for("cam", has_poses=True, replay=True, camera_image=True)
    assert list(full) == [t.topic("cam") for t in TOPICS]
    live = topics_for("cam", has_poses=False, replay=False)
    assert "/clock" not in live and "/tf" not in live and "/segfuse/cam/image_raw" not in live
    m = RosMessages()
    m._init_messages(None, load_taxonomy(), camera_id="cam", lidar_id=None, replay=False)
    assert set(m.topics) == set(topics_for("cam", has_camera=False, has_lidar=False, replay=False))
    assert "/segfuse/points" not in m.topics and "/segfuse/status" in m.topics


def _shipped_hash(msgtype: str) -> str | None:
    pkg, _, name = msgtype.split("/")
    f = ROS_SHARE / pkg / "msg" / f"{name}.json"
    if not f.exists():
        return None
    return json.loads(f.read_text())["type_hashes"][0]["hash_string"]


def _generated_hashes(tmp: Path) -> dict[str, str]:
    """RIHS01 of the types the wheels do not ship (tf2_msgs, vision_msgs, segfuse_msgs), with ROS
    2's own tools: rosidl_adapter turns each .msg into .idl, rosidl_generator_type_description
    hashes it against the wheels' .json descriptions of what it references."""
    from rosidl_adapter.msg import convert_msg_to_idl
    from rosidl_generator_type_description import generate_type_hash

    from pipeline.msgs import MSG_DIR

    src = tmp / "src"
    (src / "tf2_msgs" / "msg").mkdir(parents=True)
    (src / "tf2_msgs" / "msg" / "TFMessage.msg").write_text(TF_MESSAGE_MSG)
    for pkg in ("vision_msgs", "segfuse_msgs"):
        (src / pkg / "msg").mkdir(parents=True)
        for f in (MSG_DIR / pkg / "msg").glob("*.msg"):
            (src / pkg / "msg" / f.name).write_text(f.read_text())
    out: dict[str, str] = {}
    gen = tmp / "gen"
    includes = [f"{p.name}:{p}" for p in ROS_SHARE.iterdir() if p.is_dir()]
    # our packages reference each other only through tf2_msgs -> geometry_msgs and vision_msgs ->
    # geometry_msgs/std_msgs: generate in dependency order, each one's .json an include of the next
    for pkg in ("tf2_msgs", "vision_msgs", "segfuse_msgs"):
        idl_dir = tmp / "idl" / pkg
        tuples = []
        for f in sorted((src / pkg / "msg").glob("*.msg")):
            idl = convert_msg_to_idl(src / pkg, pkg, Path("msg") / f.name, idl_dir / "msg")
            tuples.append(f"{idl_dir}:msg/{idl.name}")
        args = tmp / f"{pkg}.json"
        args.write_text(json.dumps({"package_name": pkg, "output_dir": str(gen / pkg), "idl_tuples": tuples,
                                    "include_paths": includes + [f"{q}:{gen / q}" for q in out_pkgs(out)]}))
        for path in generate_type_hash(str(args)):
            d = json.loads(Path(path).read_text())
            for h in d["type_hashes"][:1]:
                out[h["type_name"]] = h["hash_string"]
    return out


def out_pkgs(hashes: dict[str, str]) -> list[str]:
    return sorted({t.split("/")[0] for t in hashes})


def test_type_hashes_equal_ros2s_own_generator(tmp_path):
    pytest.importorskip("rosidl_generator_type_description")
    pytest.importorskip("rosidl_adapter")
    from pipeline.msgs import make_typestore
    from pipeline.sinks.schema import TOPICS
    from pipeline.zenoh_keys import type_hash

    ts = make_typestore()
    generated = _generated_hashes(tmp_path)
    checked = {}
    for msgtype in sorted({t.msgtype for t in TOPICS}):
        ros = _shipped_hash(msgtype) or generated.get(msgtype)
        assert ros is not None, f"no ROS 2 hash for {msgtype}"
        checked[msgtype] = "wheel .json" if _shipped_hash(msgtype) else "rosidl_generator_type_description"
        assert type_hash(ts, msgtype) == ros, msgtype
    assert set(checked.values()) == {"wheel .json", "rosidl_generator_type_description"}


def test_the_foxglove_layout_shows_schema_topics_only():
    """configs/foxglove_layout.json: valid JSON, a layout tree of its panels, and every topic a
    panel names is one the run carries (the schema or the live view's own channels)."""
    import re

    from pipeline.sinks.schema import LIVE_VIEW_EXTRAS, TOPICS

    layout = json.loads((Path(__file__).resolve().parents[1] / "configs" / "foxglove_layout.json").read_text())
    panels = set(layout["configById"])

    def leaves(node):
        return {node} if isinstance(node, str) else leaves(node["first"]) | leaves(node["second"])

    assert leaves(layout["layout"]) == panels
    known = {t.topic("camera_front") for t in (*TOPICS, *LIVE_VIEW_EXTRAS)}
    named = set(re.findall(r'"(/[a-z_/]+?)(?:\.[a-z_]+)?"', json.dumps(layout["configById"])))
    assert named and named <= known, named - known
    assert {"/live/scene", "/live/points", "/live/camera_front/blended", "/segfuse/status"} <= named
