"""Camera models against OpenCV's reference projection; the field-of-view pre-cull; unproject."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from calibration.camera import FisheyeCamera, PinholeCamera, RectifiedCamera, inside_image, pixel_indices
from calibration.projection import project_lidar
from calibration.transforms import make_T, rot_z

W, H = 1280, 720
K = np.array([[800.0, 0.0, 640.3], [0.0, 790.0, 358.7], [0.0, 0.0, 1.0]])
# Strong real distortion (KITTI raw camera 00, barrel; the polynomial folds back past ~60 deg).
PLUMB_BOB = np.array([-0.3728755, 0.2037299, 0.002219027, 0.001383707, -0.07233722])
RATIONAL = np.array([0.3, -0.05, 0.001, -0.0005, 0.002, 0.6, -0.02, 0.01])
FISHEYE_D = np.array([-0.02, 0.005, -0.003, 0.0004])


def _points_in_front(n: int, max_angle_deg: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ang = np.radians(rng.uniform(0.0, max_angle_deg, n))
    phi = rng.uniform(0.0, 2 * np.pi, n)
    r = rng.uniform(1.0, 60.0, n)
    return np.stack([r * np.sin(ang) * np.cos(phi), r * np.sin(ang) * np.sin(phi), r * np.cos(ang)], axis=1)


def _cv2_project(points: np.ndarray, K: np.ndarray, dist: np.ndarray) -> np.ndarray:
    uv, _ = cv2.projectPoints(points.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K, dist)
    return uv.reshape(-1, 2)


@pytest.mark.parametrize("model, dist", [("plumb_bob", PLUMB_BOB), ("rational_polynomial", RATIONAL)])
def test_pinhole_distortion_matches_cv2_project_points(model, dist):
    cam = PinholeCamera(K, dist, W, H, distortion_model=model)
    pts = _points_in_front(5000, 45.0)
    uv, valid = cam.project(pts, min_depth_m=0.0)
    ref = _cv2_project(pts, K, dist)
    assert valid.sum() > 1000
    np.testing.assert_allclose(uv[valid], ref[valid], atol=1e-6)
    # every point cv2 puts inside the image within the monotonic range is valid for us too
    ref_inside = inside_image(ref[:, 0], ref[:, 1], W, H)
    assert np.array_equal(valid, ref_inside)


def test_fisheye_matches_cv2_fisheye_project_points():
    cam = FisheyeCamera(K * [[0.5], [0.5], [1.0]], FISHEYE_D, W, H)
    pts = _points_in_front(5000, 85.0, seed=1)
    uv, valid = cam.project(pts, min_depth_m=0.0)
    ref, _ = cv2.fisheye.projectPoints(pts.reshape(1, -1, 3), np.zeros(3), np.zeros(3), cam.K, FISHEYE_D)
    ref = ref.reshape(-1, 2)
    assert valid.sum() > 1000
    np.testing.assert_allclose(uv[valid], ref[valid], atol=1e-6)
    assert np.array_equal(valid, inside_image(ref[:, 0], ref[:, 1], W, H))


def test_fov_precull_stops_fold_back_with_strong_distortion():
    cam = PinholeCamera(K, PLUMB_BOB, W, H, distortion_model="plumb_bob")
    rng = np.random.default_rng(2)
    # Points beside the camera (52..89.5 deg off-axis; this polynomial peaks at 50 deg) and behind it.
    beside = _points_in_front(20000, 89.5, seed=3)
    beside = beside[np.degrees(np.arccos(beside[:, 2] / np.linalg.norm(beside, axis=1))) > 52.0]
    behind = rng.uniform(-30, 30, (5000, 3))
    behind[:, 2] = -np.abs(behind[:, 2]) - 0.5
    # The raw polynomial folds many of the side points back into the image: the trap exists...
    ref = _cv2_project(beside, K, PLUMB_BOB)
    assert inside_image(ref[:, 0], ref[:, 1], W, H).sum() > 100
    # ... and the pre-cull keeps every one of them out.
    for pts in (beside, behind):
        uv, valid = cam.project(pts)
        assert not valid.any()
    # Points straight ahead still project.
    _, valid = cam.project(np.array([[0.0, 0.0, 10.0], [1.0, 0.5, 10.0]]))
    assert valid.all()


def test_fisheye_cull_drops_points_behind_and_beside():
    cam = FisheyeCamera(K * [[0.3], [0.3], [1.0]], FISHEYE_D, W, H)
    pts = np.array([[0.0, 0.0, -5.0], [10.0, 0.0, 0.0], [3.0, 1.0, -1.0], [0.0, 0.0, 0.05], [0.0, 0.0, 5.0]])
    _, valid = cam.project(pts, min_depth_m=0.1)
    assert valid.tolist() == [False, False, False, False, True]


@pytest.mark.parametrize("make", [
    lambda: PinholeCamera(K, PLUMB_BOB, W, H, distortion_model="plumb_bob"),
    lambda: PinholeCamera(K, RATIONAL, W, H, distortion_model="rational_polynomial"),
    lambda: PinholeCamera(K, None, W, H, distortion_model="none"),
    lambda: FisheyeCamera(K * [[0.5], [0.5], [1.0]], FISHEYE_D, W, H),
    lambda: RectifiedCamera(np.hstack([K, [[45.0], [-0.3], [0.005]]]), rot_z(0.01), W, H),
])
def test_unproject_inverts_project(make):
    cam = make()
    pts = _points_in_front(500, 30.0, seed=4)
    uv, depth, valid = cam.project_with_depth(pts)
    assert valid.sum() > 100
    back = cam.unproject(uv[valid], depth[valid])
    np.testing.assert_allclose(back, pts[valid], atol=1e-6)
    rays = cam.rays(uv[valid])
    expected = pts[valid] - cam.center_cam
    np.testing.assert_allclose(rays, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-8)


def test_rectified_camera_is_P_times_R_rect():
    P = np.hstack([K, [[45.0], [-0.3], [0.005]]])
    R = rot_z(0.02)
    cam = RectifiedCamera(P, R, W, H)
    pts = _points_in_front(200, 30.0, seed=5)
    uvw = (P @ np.vstack([R @ pts.T, np.ones(len(pts))])).T
    uv, depth, valid = cam.project_with_depth(pts, min_depth_m=0.0)
    np.testing.assert_allclose(uv, uvw[:, :2] / uvw[:, 2:], atol=1e-9)
    np.testing.assert_allclose(depth, uvw[:, 2], atol=1e-12)
    # The optical centre is where P's offset puts it: it projects to nothing (w = 0).
    c = cam.center_cam
    np.testing.assert_allclose(P @ np.append(R @ c, 1.0), 0.0, atol=1e-9)


def test_pixel_rules_round_and_floor():
    u = np.array([-0.6, -0.5, -0.01, 0.0, W - 0.51, W - 0.5, W - 0.01, W])
    v = np.full_like(u, 10.0)
    assert inside_image(u, v, W, H, "round").tolist() == [False, True, True, True, True, False, False, False]
    assert inside_image(u, v, W, H, "floor").tolist() == [False, False, False, True, True, True, True, False]
    px = pixel_indices(np.array([[-0.5, 0.49], [W - 0.51, 3.5]]), "round")
    assert px.tolist() == [[0, 0], [W - 1, 4]]
    assert pixel_indices(np.array([[0.99, 2.0]]), "floor").tolist() == [[0, 2]]


def test_project_lidar_distorted_matches_camera_frame_projection():
    cam = PinholeCamera(K, PLUMB_BOB, W, H, distortion_model="plumb_bob")
    # LiDAR frame x forward, y left, z up; camera optical frame x right, y down, z forward.
    R_cam_from_lidar = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    T = make_T(R_cam_from_lidar @ rot_z(0.05), [0.1, -0.2, 0.3])
    rng = np.random.default_rng(6)
    pts = np.hstack([rng.uniform(-50, 50, (20000, 3)), rng.uniform(0, 1, (20000, 1))]).astype(np.float32)
    proj = project_lidar(pts, T, cam)
    pts_cam = pts[:, :3].astype(np.float64) @ T[:3, :3].T + T[:3, 3]
    uv_ref, valid_ref = cam.project(pts_cam)
    assert proj.uv.dtype == np.float32 and proj.depth_m.dtype == np.float32
    assert np.array_equal(proj.valid, valid_ref) or np.sum(proj.valid != valid_ref) <= 2   # float32 edges
    both = proj.valid & valid_ref
    np.testing.assert_allclose(proj.uv[both], uv_ref[both], atol=2e-3)
    np.testing.assert_allclose(proj.depth_m, pts_cam[:, 2], rtol=1e-5, atol=1e-4)
    assert np.all(np.isnan(proj.uv[pts_cam[:, 2] <= 0.1]))
    px = proj.pixels
    assert px.shape == (proj.count, 2)
    assert px[:, 0].min() >= 0 and px[:, 0].max() < W and px[:, 1].min() >= 0 and px[:, 1].max() < H
    np.testing.assert_array_equal(proj.flat_pixel_index(), px[:, 1] * W + px[:, 0])
