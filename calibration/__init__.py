"""Sensor models, SE(3) transforms, rigs, loaders and projection: pure numpy/OpenCV math.

Nothing is imported here (importing ``calibration`` costs nothing). The public API:
- ``calibration.transforms``: make_T, invert_T, transform_points, rot_z, quat_xyzw_from_R,
  R_from_quat_xyzw, is_rotation, interpolate_poses
- ``calibration.camera``: PinholeCamera, FisheyeCamera, RectifiedCamera (CameraModel interface)
- ``calibration.rig``: CameraSensor, LidarSensor, Rig, rig_from_drive_calib
- ``calibration.projection``: project_lidar -> Projection
- ``calibration.motion``: compensate_ego_motion, compensate_ego_motion_twist
- ``calibration.validate``: the checks (CalibrationError naming file and field)
- ``calibration.io``: load_rig (detects rig YAML, ROS bag, KITTI object/raw, nuScenes)
See docs/calibration.md for conventions and formats.
"""
