"""Sinks: where results go. ``recorder`` (a rosbag2/MCAP recording Foxglove opens) and
``overlay`` (an MP4 of the camera with masks, LiDAR points by class and labelled objects).
The Zenoh publisher comes with the publishing issue. Heavy imports live inside the modules."""
