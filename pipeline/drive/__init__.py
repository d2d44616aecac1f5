"""Recorded drives: the types of a drive with ground truth, and its writers/readers
(rosbag2 with MCAP storage, KITTI raw layout)."""
