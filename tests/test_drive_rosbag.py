"""The rosbag2 drive: a valid MCAP for tools other than ours (checked with the ``mcap``
library), standard message layouts, our extra message definitions, bare .mcap files,
and rosbag2 bags (SQLite3 storage) that other tools recorded."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml

from pipeline.drive.io import open_drive, open_writer
from pipeline.drive.synth import make_calib, make_frame, make_meta
from pipeline.errors import InputDataError
from pipeline.msgs import make_typestore

N_FRAMES = 3


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    calib = make_calib()
    frames = [make_frame(calib, i, 1000) for i in range(N_FRAMES)]
    out = tmp_path_factory.mktemp("bag") / "drive"
    with open_writer(out, calib, make_meta(N_FRAMES), format="rosbag2") as writer:
        for frame in frames:
            writer.write(frame)
    return out, calib, frames


EXPECTED = {  # topic: (schema, messages per frame or total)
    "/camera_front/image_raw": ("sensor_msgs/msg/Image", N_FRAMES),
    "/camera_front/camera_info": ("sensor_msgs/msg/CameraInfo", N_FRAMES),
    "/lidar_top/points": ("sensor_msgs/msg/PointCloud2", N_FRAMES),
    "/tf_static": ("tf2_msgs/msg/TFMessage", 1),
    "/tf": ("tf2_msgs/msg/TFMessage", None),
    "/gt/camera_front/semantic": ("sensor_msgs/msg/Image", N_FRAMES),
    "/gt/camera_front/instance": ("sensor_msgs/msg/Image", N_FRAMES),
    "/gt/lidar_top/labels": ("sensor_msgs/msg/PointCloud2", N_FRAMES),
    "/gt/objects": ("vision_msgs/msg/Detection3DArray", N_FRAMES),
    "/gt/lanes": ("segfuse_msgs/msg/LaneBoundaryArray", N_FRAMES),
    "/segfuse/drive_meta": ("std_msgs/msg/String", 1),
}


def test_mcap_is_valid_for_the_mcap_library(bag):
    from mcap.reader import make_reader

    out, _calib, frames = bag
    with open(out / "drive.mcap", "rb") as f:
        reader = make_reader(f, validate_crcs=True)
        assert reader.get_header().profile == "ros2"
        summary = reader.get_summary()
        channels = {ch.topic: ch for ch in summary.channels.values()}
        assert set(channels) == set(EXPECTED)
        counts = summary.statistics.channel_message_counts
        unique_pose_stamps = np.unique(np.concatenate([fr.pose_stamps_ns for fr in frames]))
        for topic, (schema, count) in EXPECTED.items():
            ch = channels[topic]
            assert summary.schemas[ch.schema_id].name == schema
            assert summary.schemas[ch.schema_id].encoding == "ros2msg"
            assert ch.message_encoding == "cdr"
            expected = unique_pose_stamps.size if count is None else count
            assert counts[ch.id] == expected, topic
        assert {ci.compression for ci in summary.chunk_indexes} == {"lz4"}
        # every message decodes (CRCs checked); log times in order; /tf written once per stamp
        times = {topic: [] for topic in EXPECTED}
        for _schema, channel, message in reader.iter_messages(log_time_order=True):
            times[channel.topic].append(message.log_time)
        np.testing.assert_array_equal(times["/tf"], unique_pose_stamps)
        assert times["/camera_front/image_raw"] == [fr.camera.stamp_ns for fr in frames]
        assert times["/lidar_top/points"] == [fr.lidar.stamp_ns for fr in frames]
        assert times["/tf_static"][0] <= min(times["/tf"])

    info = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["storage_identifier"] == "mcap" and info["relative_file_paths"] == ["drive.mcap"]
    by_topic = {t["topic_metadata"]["name"]: t for t in info["topics_with_message_count"]}
    qos = yaml.safe_load(by_topic["/tf_static"]["topic_metadata"]["offered_qos_profiles"])
    assert qos[0]["durability"] == 1 and qos[0]["depth"] == 1   # transient local: latched on replay


def _decoded(out, topic):
    from mcap.reader import make_reader

    typestore = make_typestore()
    with open(out / "drive.mcap", "rb") as f:
        reader = make_reader(f)
        return [typestore.deserialize_cdr(m.data, s.name) for s, _c, m in reader.iter_messages(topics=[topic])]


def test_message_layouts_are_standard(bag):
    out, calib, frames = bag
    cloud = _decoded(out, "/lidar_top/points")[0]
    assert cloud.header.frame_id == "lidar_top"
    assert [(f.name, f.offset, f.datatype, f.count) for f in cloud.fields] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("intensity", 12, 7, 1), ("t", 16, 6, 1)]
    n = frames[0].lidar.points.shape[0]
    assert (cloud.height, cloud.width, cloud.point_step, cloud.row_step) == (1, n, 20, 20 * n)
    assert cloud.is_dense and not cloud.is_bigendian and cloud.data.size == 20 * n
    rec = cloud.data.view(np.dtype({"names": ["x", "t"], "formats": ["<f4", "<u4"], "offsets": [0, 16],
                                    "itemsize": 20}))
    np.testing.assert_array_equal(rec["x"], frames[0].lidar.points[:, 0])
    np.testing.assert_array_equal(rec["t"], frames[0].lidar.t_offset_ns)

    labels = _decoded(out, "/gt/lidar_top/labels")[0]
    assert [(f.name, f.offset, f.datatype) for f in labels.fields] == [("class_id", 0, 2), ("instance_id", 2, 4)]
    assert labels.header.stamp == cloud.header.stamp and labels.width == n

    image = _decoded(out, "/camera_front/image_raw")[0]
    assert (image.encoding, image.header.frame_id, image.step) == ("bgr8", "camera_front_optical", 3 * calib.width)
    instance = _decoded(out, "/gt/camera_front/instance")[0]
    assert (instance.encoding, instance.step, instance.is_bigendian) == ("mono16", 2 * calib.width, 0)
    assert _decoded(out, "/gt/camera_front/semantic")[0].encoding == "mono8"

    info = _decoded(out, "/camera_front/camera_info")[0]
    assert info.distortion_model == "plumb_bob" and (info.width, info.height) == (calib.width, calib.height)
    np.testing.assert_array_equal(info.k.reshape(3, 3), calib.K)
    np.testing.assert_array_equal(info.p.reshape(3, 4)[:, :3], calib.K)
    np.testing.assert_array_equal(info.r, np.eye(3).reshape(-1))

    static = _decoded(out, "/tf_static")[0]
    assert {(t.header.frame_id, t.child_frame_id) for t in static.transforms} == {
        ("base_link", "camera_front_optical"), ("base_link", "lidar_top")}
    tf = _decoded(out, "/tf")[0]
    assert (tf.transforms[0].header.frame_id, tf.transforms[0].child_frame_id) == ("world", "base_link")

    dets = _decoded(out, "/gt/objects")[0]
    box = frames[0].boxes[0]
    det = dets.detections[0]
    assert det.id == str(box.instance_id) and det.results[0].hypothesis.class_id == "car"
    assert det.results[0].hypothesis.score == 1.0 and dets.header.frame_id == "base_link"
    assert [det.bbox.size.x, det.bbox.size.y, det.bbox.size.z] == box.size.tolist()
    q = det.bbox.center.orientation
    assert (q.x, q.y) == (0.0, 0.0) and np.isclose(2 * np.arctan2(q.z, q.w), box.yaw)
    lanes = _decoded(out, "/gt/lanes")[0]
    assert [b.lane_id for b in lanes.boundaries] == [0, 1]
    assert len(lanes.boundaries[0].points) == frames[0].lanes[0].points_base.shape[0]


def test_our_message_definitions_are_registered():
    ts = make_typestore()
    fields = {name: [f[0] for f in ts.fielddefs[name][1]] for name in (
        "vision_msgs/msg/BoundingBox3D", "vision_msgs/msg/ObjectHypothesis",
        "vision_msgs/msg/ObjectHypothesisWithPose", "vision_msgs/msg/Detection3D",
        "vision_msgs/msg/Detection3DArray", "segfuse_msgs/msg/LaneBoundary", "segfuse_msgs/msg/LaneBoundaryArray")}
    assert fields == {
        "vision_msgs/msg/BoundingBox3D": ["center", "size"],
        "vision_msgs/msg/ObjectHypothesis": ["class_id", "score"],
        "vision_msgs/msg/ObjectHypothesisWithPose": ["hypothesis", "pose"],
        "vision_msgs/msg/Detection3D": ["header", "results", "bbox", "id"],
        "vision_msgs/msg/Detection3DArray": ["header", "detections"],
        "segfuse_msgs/msg/LaneBoundary": ["lane_id", "type", "points"],
        "segfuse_msgs/msg/LaneBoundaryArray": ["header", "boundaries"],
    }


def test_bare_mcap_file_opens(bag, tmp_path):
    out, _calib, frames = bag
    bare = tmp_path / "copy.mcap"
    shutil.copy(out / "drive.mcap", bare)      # no metadata.yaml beside it
    with open_drive(bare) as drive:
        assert len(drive) == N_FRAMES and drive.meta is not None
        frame = drive.frame(2)
    np.testing.assert_array_equal(frame.camera.image, frames[2].camera.image)
    np.testing.assert_array_equal(frame.point_instance, frames[2].point_instance)


def test_truncated_mcap_is_reported(bag, tmp_path):
    out, _calib, _frames = bag
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    mcap = broken / "drive.mcap"
    data = mcap.read_bytes()
    mcap.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputDataError) as err:
        open_drive(broken)
    assert err.value.path == str(mcap)
    (broken / "drive.mcap").unlink()
    with pytest.raises(InputDataError, match="missing") as err:
        open_drive(broken)
    assert err.value.path == str(mcap)


# --- A bag another recorder made ---------------------------------------------------------------

T0 = 1_600_000_000_000_000_000


def _write_foreign_bag(path, rng):
    """rosbag2 with SQLite3 storage, in other conventions than ours: rgb8 with row padding,
    a Velodyne-style cloud (ring, time in seconds), a tf_static chain, /tf odom->base_link at
    50 Hz, log times 25 ms after the header stamps, one camera image without a sweep."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = ts.types
    Header, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]

    def hdr(stamp, frame):
        return Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id=frame)

    def tfs(stamp, parent, child, xyz, yaw):
        return T["geometry_msgs/msg/TransformStamped"](
            header=hdr(stamp, parent), child_frame_id=child, transform=T["geometry_msgs/msg/Transform"](
                translation=T["geometry_msgs/msg/Vector3"](x=xyz[0], y=xyz[1], z=xyz[2]),
                rotation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=np.sin(yaw / 2), w=np.cos(yaw / 2))))

    h, w, n = 24, 32, 500
    truth = {"images": [], "points": [], "time": [], "lidar": [], "camera": []}
    with Writer(path, version=8, storage_plugin=StoragePlugin.SQLITE3) as bag:
        c_img = bag.add_connection("/sensors/cam/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        c_info = bag.add_connection("/sensors/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=ts)
        c_pts = bag.add_connection("/velodyne_points", "sensor_msgs/msg/PointCloud2", typestore=ts)
        c_static = bag.add_connection("/tf_static", "tf2_msgs/msg/TFMessage", typestore=ts)
        c_tf = bag.add_connection("/tf", "tf2_msgs/msg/TFMessage", typestore=ts)
        static = T["tf2_msgs/msg/TFMessage"](transforms=[
            tfs(T0, "base_link", "sensor_kit", (1.0, 0.0, 1.5), 0.0),
            tfs(T0, "sensor_kit", "velodyne", (0.2, 0.0, 0.3), 0.1),
            tfs(T0, "base_link", "cam_optical_frame", (1.5, 0.1, 1.2), -0.2)])
        bag.write(c_static, T0, ts.serialize_cdr(static, "tf2_msgs/msg/TFMessage"))
        for k in range(25):
            stamp = T0 + k * 20_000_000
            msg = T["tf2_msgs/msg/TFMessage"](
                transforms=[tfs(stamp, "odom", "base_link", (k * 0.2, 0.0, 0.0), 0.01 * k)])
            bag.write(c_tf, stamp + 30_000_000, ts.serialize_cdr(msg, "tf2_msgs/msg/TFMessage"))
        K = np.array([30.0, 0, 16, 0, 30.0, 12, 0, 0, 1])
        dtype = np.dtype({"names": ["x", "y", "z", "intensity", "ring", "time"],
                          "formats": ["<f4", "<f4", "<f4", "<f4", "<u2", "<f4"],
                          "offsets": [0, 4, 8, 12, 16, 20], "itemsize": 24})
        fields = [T["sensor_msgs/msg/PointField"](name=nm, offset=off, datatype=dt, count=1) for nm, off, dt in
                  [("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 12, 7), ("ring", 16, 4), ("time", 20, 7)]]
        for i in range(4):
            cam = T0 + i * 100_000_000 + 40_000_000
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            step = w * 3 + 4
            data = np.zeros((h, step), np.uint8)
            data[:, : w * 3] = rgb.reshape(h, -1)
            img = T["sensor_msgs/msg/Image"](header=hdr(cam, "cam_optical_frame"), height=h, width=w, encoding="rgb8",
                                             is_bigendian=0, step=step, data=data.reshape(-1))
            bag.write(c_img, cam + 25_000_000, ts.serialize_cdr(img, "sensor_msgs/msg/Image"))
            info = T["sensor_msgs/msg/CameraInfo"](
                header=hdr(cam, "cam_optical_frame"), height=h, width=w, distortion_model="plumb_bob",
                d=np.array([0.1, -0.01, 0.0, 0.0, 0.0]), k=K, r=np.eye(3).reshape(-1),
                p=np.hstack([K.reshape(3, 3), np.zeros((3, 1))]).reshape(-1), binning_x=0, binning_y=0,
                roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                          do_rectify=False))
            bag.write(c_info, cam + 25_000_000, ts.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
            truth["images"].append(rgb[:, :, ::-1])
            truth["camera"].append(cam)
            if i == 3:
                continue     # the last image has no sweep
            lid = T0 + i * 100_000_000
            rec = np.zeros(n, dtype)
            for name in ("x", "y", "z", "intensity"):
                rec[name] = rng.standard_normal(n)
            rec["ring"] = rng.integers(0, 32, n)
            rec["time"] = np.sort(rng.random(n) * 0.1).astype(np.float32)
            cloud = T["sensor_msgs/msg/PointCloud2"](header=hdr(lid, "velodyne"), height=1, width=n, fields=fields,
                                                     is_bigendian=False, point_step=24, row_step=24 * n,
                                                     data=rec.view(np.uint8), is_dense=True)
            bag.write(c_pts, lid + 25_000_000, ts.serialize_cdr(cloud, "sensor_msgs/msg/PointCloud2"))
            truth["points"].append(np.stack([rec["x"], rec["y"], rec["z"], rec["intensity"]], axis=1))
            truth["time"].append(np.round(rec["time"].astype(np.float64) * 1e9).astype(np.int64))
            truth["lidar"].append(lid)
    return truth


def test_reads_a_sqlite3_bag_from_another_recorder(tmp_path):
    path = tmp_path / "foreign"
    truth = _write_foreign_bag(path, np.random.default_rng(3))
    with open_drive(path) as drive:
        assert drive.format == "rosbag2" and drive.meta is None
        assert len(drive) == 3     # the fourth image has no sweep
        c = drive.calib
        assert (c.camera_id, c.lidar_id, c.width, c.height) == ("sensors_cam", "velodyne", 32, 24)
        np.testing.assert_array_equal(c.dist, [0.1, -0.01, 0.0, 0.0, 0.0])
        yaw = 0.1
        np.testing.assert_allclose(c.T_base_from_lidar[:3, 3], [1.2, 0.0, 1.8], atol=1e-12)
        np.testing.assert_allclose(c.T_base_from_lidar[:2, :2], [[np.cos(yaw), -np.sin(yaw)],
                                                                  [np.sin(yaw), np.cos(yaw)]], atol=1e-12)
        np.testing.assert_allclose(c.T_base_from_cam[:3, 3], [1.5, 0.1, 1.2], atol=1e-12)
        frames = list(drive.frames())
    for i, f in enumerate(frames):
        assert f.camera.stamp_ns == truth["camera"][i] and f.lidar.stamp_ns == truth["lidar"][i]
        np.testing.assert_array_equal(f.camera.image, truth["images"][i])
        np.testing.assert_array_equal(f.lidar.points, truth["points"][i])
        np.testing.assert_array_equal(f.lidar.t_offset_ns, truth["time"][i])
        assert f.semantic is None and f.instance is None and f.point_class is None and f.point_instance is None
        assert f.boxes == [] and f.lanes == []
        # /tf poses (odom -> base_link, every 20 ms) within the frame's window, by header stamp
        lo, hi = truth["lidar"][i] - 10_000_000, truth["lidar"][i] + 110_000_000
        expected = [T0 + k * 20_000_000 for k in range(25) if lo <= T0 + k * 20_000_000 <= hi]
        np.testing.assert_array_equal(f.pose_stamps_ns, expected)
        k = (expected[0] - T0) // 20_000_000
        np.testing.assert_allclose(f.T_world_from_base[0, :3, 3], [k * 0.2, 0.0, 0.0], atol=1e-12)


def test_reads_our_bag_rerecorded_with_late_log_times(bag, tmp_path):
    """Our drive replayed and recorded again: log times lag the header stamps, so the reader
    indexes by header stamp and still gives every frame, GT and pose back."""
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer
    from test_drive_roundtrip import assert_frames_equal

    out, _calib, frames = bag
    copy = tmp_path / "rerecorded"
    with AnyReader([out]) as reader, Writer(copy, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {c.id: writer.add_connection(c.topic, c.msgtype, msgdef=c.msgdef.data, rihs01=c.digest)
                 for c in reader.connections}
        for conn, t, raw in reader.messages():
            writer.write(conns[conn.id], t + 7_000_000 + (t % 3) * 1000, raw)
    with open_drive(copy) as drive:
        assert len(drive) == N_FRAMES and drive.meta is not None
        assert not drive._log_is_stamp          # the header-stamp path, not the index shortcut
        for a, b in zip(frames, drive.frames(), strict=True):     # strict: every frame comes back
            assert_frames_equal(a, b, 1e-12)
