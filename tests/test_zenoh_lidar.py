"""Live LiDAR over Zenoh: PointCloud2 CDR samples put from another Zenoh session on loopback
come out of ZenohLidarSource as LidarInput, exactly; a garbage sample is skipped and counted."""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

zenoh = pytest.importorskip("zenoh")

from pipeline.msgs import make_typestore  # noqa: E402
from pipeline.sources.uri import parse_uri  # noqa: E402
from pipeline.zenoh_keys import topic_key, type_hash  # noqa: E402

T_CLOUD = "sensor_msgs/msg/PointCloud2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cloud_cdr(ts, stamp_ns: int, xyz: np.ndarray, t_off: np.ndarray) -> bytes:
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    PointField = ts.types["sensor_msgs/msg/PointField"]
    PointCloud2 = ts.types[T_CLOUD]
    rec = np.zeros(len(xyz), np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4"),
                                       ("t", "<u4")]))
    rec["x"], rec["y"], rec["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    rec["intensity"] = 7.0
    rec["t"] = t_off
    fields = [PointField(name=n, offset=o, datatype=dt, count=1)
              for n, o, dt in (("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 12, 7), ("t", 16, 6))]
    msg = PointCloud2(header=Header(stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
                                    frame_id="velodyne"),
                      height=1, width=len(xyz), fields=fields, is_bigendian=False, point_step=20,
                      row_step=20 * len(xyz), data=np.frombuffer(rec.tobytes(), np.uint8), is_dense=True)
    return bytes(ts.serialize_cdr(msg, T_CLOUD))


def test_zenoh_lidar_yields_clouds_and_skips_garbage():
    from pipeline.zenoh_keys import zenoh_config
    from pipeline.sources.zenoh_lidar import ZenohLidarSource

    ts = make_typestore()
    ep = f"tcp/127.0.0.1:{free_port()}"
    key = topic_key(0, "/velodyne_points", T_CLOUD, type_hash(ts, T_CLOUD))
    src = ZenohLidarSource(parse_uri(f"zenoh://0/velodyne_points/**?listen={ep}&depth=8",
                                     field_name="input.lidar"))
    pub_session = zenoh.open(zenoh_config(connect=[ep]))
    got: list = []
    try:
        assert src.info.live and src.info.kind == "zenoh" and src.lidar_id == "lidar"
        xyz_a = np.array([[1.5, -2.25, 0.125], [10.0, 20.0, -3.0], [0.0, 0.5, 1e-3]], np.float32)
        xyz_b = np.array([[-4.0, 4.0, 2.5]], np.float32)
        samples = [cloud_cdr(ts, 1_700_000_000_123_456_789, xyz_a, np.array([0, 50, 100])),
                   b"\x00\x01not a cloud at all",
                   cloud_cdr(ts, 1_700_000_000_223_456_789, xyz_b, np.array([7]))]

        reader = threading.Thread(target=lambda: got.extend(item for _, item in zip(range(2), src)), daemon=True)
        reader.start()
        pub = pub_session.declare_publisher(key)
        deadline = time.monotonic() + 10.0
        while src.received == 0 and time.monotonic() < deadline:      # until the sessions are connected
            pub.put(b"")                                                # garbage too: skipped, counted
            time.sleep(0.05)
        assert src.received > 0, "the sessions did not connect"
        warmup = src.received
        for payload in samples:
            pub.put(payload)
            time.sleep(0.05)
        reader.join(timeout=10.0)
        assert not reader.is_alive()
        pub.undeclare()
    finally:
        src.stop()
        src.close()
        src.close()                                                     # idempotent
        pub_session.close()
    assert [g.stamp_ns for g in got] == [1_700_000_000_123_456_789, 1_700_000_000_223_456_789]
    assert [g.seq for g in got] == [0, 1]
    np.testing.assert_array_equal(got[0].sweep.points[:, :3], xyz_a)
    np.testing.assert_array_equal(got[1].sweep.points[:, :3], xyz_b)
    assert (got[0].sweep.points[:, 3] == 7.0).all()
    assert got[0].sweep.lidar_id == "lidar"
    np.testing.assert_array_equal(got[0].sweep.t_offset_ns, [0, 50, 100])
    np.testing.assert_array_equal(got[1].sweep.t_offset_ns, [7])
    assert src.dropped == 0
    assert len(src.skipped) == warmup + 1
    assert all(s.what == "cloud" and "sensor_msgs/msg/PointCloud2" in s.reason for s in src.skipped)
    assert src.skipped[-1].where == key


def test_zenoh_lidar_full_queue_keeps_the_newest_and_counts_drops():
    from pipeline.zenoh_keys import zenoh_config
    from pipeline.sources.zenoh_lidar import ZenohLidarSource

    ts = make_typestore()
    ep = f"tcp/127.0.0.1:{free_port()}"
    key = topic_key(0, "/points", T_CLOUD, type_hash(ts, T_CLOUD))
    src = ZenohLidarSource(parse_uri(f"zenoh://0/points/**?listen={ep}&depth=1", field_name="input.lidar"))
    pub_session = zenoh.open(zenoh_config(connect=[ep]))
    try:
        pub = pub_session.declare_publisher(key)
        deadline = time.monotonic() + 10.0
        while src.received == 0 and time.monotonic() < deadline:
            pub.put(b"")
            time.sleep(0.05)
        assert src.received > 0, "the sessions did not connect"
        time.sleep(0.3)                                      # the last warm-up sample waits in the queue
        received, dropped = src.received, src.dropped
        xyz = np.zeros((1, 3), np.float32)
        for k in range(3):                                   # nobody reads: the queue holds one
            pub.put(cloud_cdr(ts, 1_000 + k, xyz, np.array([0])))
        deadline = time.monotonic() + 10.0
        while src.received < received + 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        item = next(iter(src))
        pub.undeclare()
    finally:
        src.stop()
        src.close()
        pub_session.close()
    # the warm-up sample and the two older clouds were let go for the newest one
    assert src.dropped - dropped == 3 and item.stamp_ns == 1_002


def test_zenoh_lidar_refuses_a_bad_uri():
    from pipeline.errors import ConfigError
    from pipeline.sources.zenoh_lidar import ZenohLidarSource

    with pytest.raises(ConfigError):
        ZenohLidarSource(parse_uri("zenoh://0/points?depth=0", field_name="input.lidar"))
    with pytest.raises(ConfigError):
        ZenohLidarSource(parse_uri("zenoh://0/points?mode=broker", field_name="input.lidar"))


def test_zenoh_lidar_rejects_wrong_types_and_clouds_without_xyz():
    from pipeline.errors import InputDataError
    from pipeline.sources.zenoh_lidar import ZenohLidarSource

    ts = make_typestore()
    key = topic_key(0, "/velodyne_points", T_CLOUD, type_hash(ts, T_CLOUD))
    src = ZenohLidarSource(parse_uri(f"zenoh://0/**?listen=tcp/127.0.0.1:{free_port()}", field_name="input.lidar"))
    try:
        ok = cloud_cdr(ts, 5, np.array([[1.0, 2.0, 3.0]], np.float32), np.array([0]))
        assert src._decode(key, ok).points[0, :3].tolist() == [1.0, 2.0, 3.0]
        assert src._decode("velodyne_points", ok).stamp_ns == 5          # a zenoh-bridge-ros2dds key
        with pytest.raises(InputDataError, match="std_msgs/msg/String"):
            src._decode(topic_key(0, "/chatter", "std_msgs/msg/String", "RIHS01_x"), ok)
        no_x = ts.deserialize_cdr(ok, T_CLOUD)
        no_x.fields[0].name = "u"
        with pytest.raises(InputDataError, match="no field 'x'"):
            src._decode(key, bytes(ts.serialize_cdr(no_x, T_CLOUD)))
    finally:
        src.close()


def test_zenoh_lidar_takes_the_rig_lidar_named_by_header_frame_id():
    """ROS: a cloud's points are in header.frame_id; the source maps it to that rig LiDAR, and
    refuses (skips) a frame the rig has no LiDAR for instead of fusing it with another extrinsic."""
    from calibration.camera import PinholeCamera
    from calibration.rig import CameraSensor, LidarSensor, Rig
    from pipeline.errors import InputDataError
    from pipeline.sources.zenoh_lidar import ZenohLidarSource

    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    rig = Rig([CameraSensor("cam", "cam_optical", PinholeCamera(K, None, 640, 480, distortion_model="none"), np.eye(4))],
              [LidarSensor("lidar_top", "velodyne", np.eye(4)), LidarSensor("lidar_rear", "rear_link", np.eye(4))])
    ts = make_typestore()
    key = topic_key(0, "/velodyne_points", T_CLOUD, type_hash(ts, T_CLOUD))
    src = ZenohLidarSource(parse_uri(f"zenoh://0/velodyne_points/**?listen=tcp/127.0.0.1:{free_port()}",
                                     field_name="input.lidar"), rig=rig)
    try:
        xyz = np.array([[1.0, 2.0, 3.0]], np.float32)
        sweep = src._decode(key, cloud_cdr(ts, 5, xyz, np.array([0])))         # frame_id "velodyne"
        assert sweep.lidar_id == "lidar_top"
        assert src.lidar_for_frame("rear_link") == "lidar_rear" and src.lidar_for_frame("") == src.lidar_id
        with pytest.raises(InputDataError, match="header.frame_id 'map' is no LiDAR of the rig"):
            src.lidar_for_frame("map")
    finally:
        src.stop()
        src.close()
