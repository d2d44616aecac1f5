"""Live LiDAR over Zenoh (ROS 2 ``sensor_msgs/PointCloud2`` as CDR, as zenoh-bridge-ros2dds and
rmw_zenoh publish it): a stub.

TODO(publishing issue): the Zenoh transport (session, key expressions, QoS) arrives with the
publisher. This source will then subscribe to ``zenoh://KEY_EXPR``, decode each sample with
``pipeline.drive.rosbag.points_from_cloud`` and yield ``LidarInput`` like the bag source, so
the sync stage pairs it with a live camera exactly as it does with recorded sweeps. Until
then a config naming a zenoh:// LiDAR is refused at start, with this message.
"""
from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError
from pipeline.sources.base import Source
from pipeline.sources.uri import SourceURI


class ZenohLidarSource(Source):
    def __init__(self, uri: SourceURI, *, rig: Any = None) -> None:
        super().__init__()
        raise ConfigError("live LiDAR over Zenoh is not implemented yet (it comes with the publishing issue's "
                          "transport); replay a recorded drive or bag instead", path=uri.raw, field="input.lidar")
