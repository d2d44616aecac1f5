"""Sinks: where results go. ``recorder`` (a rosbag2/MCAP recording Foxglove opens),
``overlay`` (an MP4 of the camera with masks, LiDAR points by class and labelled objects) and
``publisher`` (results over Zenoh, readable by ROS 2 through rmw_zenoh; docs/publishing.md).
Heavy imports live inside the modules."""
