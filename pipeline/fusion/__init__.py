"""Fusion of camera masks with LiDAR: per-point labels, 3D objects, lane lines, ego motion."""
