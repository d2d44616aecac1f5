"""Recorded drives: the types of a drive with ground truth (``types``), and its writers and
readers (``io.open_writer`` / ``io.open_drive``) for rosbag2 with MCAP storage (``rosbag``)
and the KITTI raw layout (``kitti_raw``). See docs/drive_format.md.

Light package: nothing is imported here; the format modules import rosbags, mcap and cv2
inside their functions."""
