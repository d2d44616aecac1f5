"""Camera models: pinhole (+ OpenCV plumb_bob / rational_polynomial distortion), fisheye
(Kannala-Brandt, ``cv2.fisheye`` conventions) and rectified cameras with a projection matrix
(KITTI ``P2 @ R0_rect``). Pure numpy/OpenCV math, vectorised, no I/O.

Conventions
- The camera frame is the optical frame: x right, y down, z forward (metres).
- Pixels follow OpenCV: the centre of pixel (col 0, row 0) is at (u, v) = (0, 0); a point at
  (u, v) falls in pixel ``(floor(u + 0.5), floor(v + 0.5))``, i.e. ``round``. The image spans
  ``-0.5 <= u < W - 0.5``. This is the default rule, ``inside="round"``.
- ``inside="floor"`` is the rule of the KITTI devkit (``0 <= u < W``, pixel ``floor(u)``); it
  reproduces the KITTI reference point counts (docs/calibration.md).
- ``depth`` is the distance along the camera's own optical axis: z in the optical frame; for a
  rectified camera the third row of ``P`` (z in the rectified frame of *that* camera).
- Field-of-view pre-cull: before any distortion polynomial is evaluated, points behind the
  camera, nearer than ``min_depth_m`` or outside the angular range in which the model is
  monotonic and can reach the image are dropped, so points at extreme angles never fold back
  into the image through the polynomial.
"""
from __future__ import annotations

from functools import cached_property

import cv2
import numpy as np

from calibration import validate

DEFAULT_MIN_DEPTH_M = 0.1
INSIDE_RULES = ("round", "floor")
_FOV_MARGIN = 0.02            # relative margin of the pre-cull region beyond the image
_R_SEARCH_MAX = 20.0          # largest tan(angle) searched for the monotonic limit (~87 deg)


def inside_image(u: np.ndarray, v: np.ndarray, width: int, height: int, inside: str = "round") -> np.ndarray:
    """Boolean mask of pixel coordinates that land inside a W x H image (NaN is outside)."""
    if inside == "round":
        lo, w_hi, h_hi = -0.5, width - 0.5, height - 0.5
    elif inside == "floor":
        lo, w_hi, h_hi = 0.0, float(width), float(height)
    else:
        raise ValueError(f"inside must be one of {INSIDE_RULES}, got {inside!r}")
    return (u >= lo) & (u < w_hi) & (v >= lo) & (v < h_hi)


def pixel_indices(uv: np.ndarray, inside: str = "round") -> np.ndarray:
    """Integer (col, row) of each (u, v) under the given rule -> (N, 2) int32."""
    if inside == "round":
        return np.floor(uv + 0.5).astype(np.int32)
    if inside == "floor":
        return np.floor(uv).astype(np.int32)
    raise ValueError(f"inside must be one of {INSIDE_RULES}, got {inside!r}")


def finish_linear(uvw_T: np.ndarray, width: int, height: int, min_depth_m: float,
                  inside: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From homogeneous pixel coordinates (3, N) (modified in place) to
    (uv_T (2, N), depth (N,), valid (N,)). Rows, not columns: contiguous and fast.

    ``uv_T`` is NaN for points not in front of the camera (depth <= min_depth_m).
    """
    depth = uvw_T[2].copy()
    inv = np.full_like(depth, np.nan)
    np.divide(1.0, depth, out=inv, where=depth > min_depth_m)
    uv_T = uvw_T[:2]
    uv_T *= inv
    valid = inside_image(uv_T[0], uv_T[1], width, height, inside)
    return uv_T, depth, valid


class CameraModel:
    """Interface of a camera model. Subclasses set ``width``, ``height`` and ``kind``."""

    kind = "abstract"
    width: int
    height: int

    # -- what subclasses provide ----------------------------------------------------------
    @property
    def K(self) -> np.ndarray:
        raise NotImplementedError

    def linear_matrix(self) -> np.ndarray | None:
        """(3, 4) matrix M with ``[u w, v w, w] = M [x, y, z, 1]`` when the model is linear
        (no distortion), else None. Lets ``project_lidar`` fold the extrinsic in: one matmul."""
        return None

    @property
    def center_cam(self) -> np.ndarray:
        """Optical centre in the model's camera frame (zero except for rectified cameras)."""
        return np.zeros(3)

    def fov_keep(self, x: np.ndarray, y: np.ndarray, z: np.ndarray,
                 min_depth_m: float = DEFAULT_MIN_DEPTH_M) -> np.ndarray:
        """Pre-cull on camera-frame coordinates (N,) each: True for points the model may
        project (in front, within the monotonic field of view that can reach the image)."""
        return z > min_depth_m

    def _project_culled(self, points_cam: np.ndarray) -> np.ndarray:
        """(N, 2) float64 pixels of points (N, 3) float64 that passed ``fov_keep`` (nonlinear models)."""
        raise NotImplementedError

    def unproject(self, uv: np.ndarray, depth_m: np.ndarray) -> np.ndarray:
        """Points (N, 3) in the camera frame at the given pixels and depths (inverse of project)."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------
    def depth(self, points_cam: np.ndarray) -> np.ndarray:
        """Depth along the optical axis (see module doc) of points (N, >=3) -> (N,)."""
        M = self.linear_matrix()
        if M is not None:
            return points_cam[:, :3] @ M[2, :3].astype(points_cam.dtype) + M[2, 3]
        return np.ascontiguousarray(points_cam[:, 2])

    def project(self, points_cam: np.ndarray, *, min_depth_m: float = DEFAULT_MIN_DEPTH_M,
                inside: str = "round") -> tuple[np.ndarray, np.ndarray]:
        """Project points (N, >=3) in the camera frame -> (uv (N, 2), valid (N,) bool).

        ``uv`` has the float dtype of the input (float32 stays float32) and is NaN where the
        point was culled (behind, too near, outside the field of view). ``valid``: in front,
        within the field of view and inside the image under ``inside``.
        """
        uv, _, valid = self.project_with_depth(points_cam, min_depth_m=min_depth_m, inside=inside)
        return uv, valid

    def project_with_depth(self, points_cam: np.ndarray, *, min_depth_m: float = DEFAULT_MIN_DEPTH_M,
                           inside: str = "round") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like ``project`` and also the depth (N,) of every point."""
        points_cam = np.asarray(points_cam)
        if points_cam.ndim != 2 or points_cam.shape[1] < 3:
            raise ValueError(f"points_cam must be (N, >=3), got {points_cam.shape}")
        if points_cam.dtype not in (np.float32, np.float64):
            points_cam = points_cam.astype(np.float64)
        uv_T, depth, valid = self.project_T(np.ascontiguousarray(points_cam[:, :3].T),
                                            min_depth_m=min_depth_m, inside=inside)
        return uv_T.T, depth, valid

    def project_T(self, points_cam_T: np.ndarray, *, min_depth_m: float = DEFAULT_MIN_DEPTH_M,
                  inside: str = "round") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row layout core of ``project``: points (3, N) -> (uv_T (2, N), depth (N,), valid (N,)).
        ``points_cam_T`` may be overwritten."""
        dtype = points_cam_T.dtype
        M = self.linear_matrix()
        if M is not None:
            M = M.astype(dtype)
            uvw_T = M[:, :3] @ points_cam_T
            uvw_T += M[:, 3:4]
            return finish_linear(uvw_T, self.width, self.height, min_depth_m, inside)
        x, y, z = points_cam_T
        depth = z.copy()
        keep = np.flatnonzero(self.fov_keep(x, y, z, min_depth_m))
        uv_T = np.full((2, len(depth)), np.nan, dtype=dtype)
        valid = np.zeros(len(depth), dtype=bool)
        if keep.size:
            uv_keep = self._project_culled(points_cam_T[:, keep].T.astype(np.float64))
            uv_T[:, keep] = uv_keep.T
            u, v = uv_T[0, keep], uv_T[1, keep]          # test what is stored (float32 rounding)
            valid[keep] = inside_image(u, v, self.width, self.height, inside)
        return uv_T, depth, valid

    def rays(self, uv: np.ndarray) -> np.ndarray:
        """Unit viewing directions (N, 3) in the camera frame through pixels ``uv`` (N, 2).
        The rays start at ``center_cam``."""
        p = self.unproject(uv, np.ones(len(uv))) - self.center_cam
        return p / np.linalg.norm(p, axis=1, keepdims=True)

    def describe(self) -> str:
        return f"{self.kind} {self.width}x{self.height}"


class PinholeCamera(CameraModel):
    """Pinhole camera with OpenCV distortion.

    ``distortion_model``: ``"none"``, ``"plumb_bob"`` (k1, k2, p1, p2[, k3]) or
    ``"rational_polynomial"`` (k1, k2, p1, p2, k3, k4, k5, k6), as ``cv2.projectPoints``.
    """

    kind = "pinhole"

    def __init__(self, K: np.ndarray, dist: np.ndarray | None, width: int, height: int,
                 distortion_model: str = "plumb_bob"):
        self.width, self.height = validate.check_image_size(width, height, path=None, field="size")
        self._K = validate.check_intrinsics(K, self.width, self.height, path=None, field="K")
        self.dist = validate.check_distortion(dist, distortion_model, path=None, field="distortion")
        self.distortion_model = distortion_model
        self._linear = not np.any(self.dist)     # all-zero coefficients: the fast linear path

    @property
    def K(self) -> np.ndarray:
        return self._K

    def linear_matrix(self) -> np.ndarray | None:
        if not self._linear:
            return None
        return np.hstack([self._K, np.zeros((3, 1))])

    def _coeffs(self) -> np.ndarray:
        c = np.zeros(8)
        c[: self.dist.size] = self.dist
        return c

    def distort_normalized(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """OpenCV distortion of normalised coordinates (x/z, y/z)."""
        k1, k2, p1, p2, k3, k4, k5, k6 = self._coeffs()
        r2 = x * x + y * y
        radial = (1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1.0 + r2 * (k4 + r2 * (k5 + r2 * k6)))
        xy = x * y
        xd = x * radial + 2.0 * p1 * xy + p2 * (r2 + 2.0 * x * x)
        yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * xy
        return xd, yd

    def _to_pixels(self, xd: np.ndarray, yd: np.ndarray) -> np.ndarray:
        K = self._K
        return np.stack([K[0, 0] * xd + K[0, 1] * yd + K[0, 2], K[1, 1] * yd + K[1, 2]], axis=1)

    def _project_culled(self, points_cam: np.ndarray) -> np.ndarray:
        z = points_cam[:, 2]
        xd, yd = self.distort_normalized(points_cam[:, 0] / z, points_cam[:, 1] / z)
        return self._to_pixels(xd, yd)

    @cached_property
    def _fov(self) -> tuple[float, float, float, float, float]:
        """(x_min, x_max, y_min, y_max, r_max) of normalised coordinates that may reach the image."""
        k1, k2, p1, p2, k3, k4, k5, k6 = self._coeffs()
        r = np.linspace(0.0, _R_SEARCH_MAX, 20001)
        r2 = r * r
        num = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
        den = 1.0 + r2 * (k4 + r2 * (k5 + r2 * k6))
        g = r * num / den
        bad = np.flatnonzero((np.diff(g) <= 0) | (den[1:] <= 0))
        r_max = float(r[bad[0]]) if bad.size else _R_SEARCH_MAX
        rr, th = np.meshgrid(np.linspace(0.0, r_max, 400), np.linspace(0.0, 2 * np.pi, 361))
        x, y = rr.ravel() * np.cos(th.ravel()), rr.ravel() * np.sin(th.ravel())
        uv = self._to_pixels(*self.distort_normalized(x, y))
        mw, mh = _FOV_MARGIN * self.width, _FOV_MARGIN * self.height
        hit = (uv[:, 0] >= -0.5 - mw) & (uv[:, 0] < self.width - 0.5 + mw) \
            & (uv[:, 1] >= -0.5 - mh) & (uv[:, 1] < self.height - 0.5 + mh)
        if not np.any(hit):
            return 0.0, 0.0, 0.0, 0.0, 0.0
        step = r_max / 399 * 2.0
        return (float(x[hit].min()) - step, float(x[hit].max()) + step,
                float(y[hit].min()) - step, float(y[hit].max()) + step, r_max)

    def fov_keep(self, x: np.ndarray, y: np.ndarray, z: np.ndarray,
                 min_depth_m: float = DEFAULT_MIN_DEPTH_M) -> np.ndarray:
        mask = z > min_depth_m
        if self._linear:
            return mask
        x_min, x_max, y_min, y_max, r_max = self._fov
        mask &= (x >= x_min * z) & (x <= x_max * z) & (y >= y_min * z) & (y <= y_max * z)
        mask &= x * x + y * y <= (r_max * r_max) * (z * z)
        return mask

    def undistort_normalized(self, uv: np.ndarray) -> np.ndarray:
        """Normalised undistorted coordinates (N, 2) of pixels (N, 2) (iterative, OpenCV)."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 1, 2)
        if self._linear:
            Kinv = np.linalg.inv(self._K)
            return (uv.reshape(-1, 2) @ Kinv[:2, :2].T) + Kinv[:2, 2]
        crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
        return cv2.undistortPoints(uv, self._K, self._coeffs(), criteria=crit).reshape(-1, 2)

    def unproject(self, uv: np.ndarray, depth_m: np.ndarray) -> np.ndarray:
        xy = self.undistort_normalized(uv)
        d = np.asarray(depth_m, dtype=np.float64).reshape(-1, 1)
        return np.hstack([xy * d, d])

    def describe(self) -> str:
        return f"pinhole {self.width}x{self.height} distortion {self.distortion_model}"


class FisheyeCamera(CameraModel):
    """Kannala-Brandt fisheye as ``cv2.fisheye``: theta_d = theta (1 + k1 t^2 + k2 t^4 + k3 t^6 + k4 t^8)
    with theta the angle from the optical axis; D = (k1, k2, k3, k4). Sees only z > 0."""

    kind = "fisheye"

    def __init__(self, K: np.ndarray, D: np.ndarray, width: int, height: int):
        self.width, self.height = validate.check_image_size(width, height, path=None, field="size")
        self._K = validate.check_intrinsics(K, self.width, self.height, path=None, field="K")
        self.D = validate.check_distortion(D, "equidistant", path=None, field="distortion")

    @property
    def K(self) -> np.ndarray:
        return self._K

    def _theta_d(self, theta: np.ndarray) -> np.ndarray:
        k1, k2, k3, k4 = self.D
        t2 = theta * theta
        return theta * (1.0 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))

    def _pixels_from_angle(self, theta: np.ndarray, cos_phi: np.ndarray, sin_phi: np.ndarray) -> np.ndarray:
        td = self._theta_d(theta)
        xd, yd = td * cos_phi, td * sin_phi
        K = self._K
        return np.stack([K[0, 0] * xd + K[0, 1] * yd + K[0, 2], K[1, 1] * yd + K[1, 2]], axis=1)

    def _project_culled(self, points_cam: np.ndarray) -> np.ndarray:
        x, y, z = points_cam[:, 0], points_cam[:, 1], points_cam[:, 2]
        r = np.hypot(x, y)
        theta = np.arctan2(r, z)
        safe = np.where(r > 0, r, 1.0)
        return self._pixels_from_angle(theta, np.where(r > 0, x / safe, 1.0), np.where(r > 0, y / safe, 0.0))

    @cached_property
    def _tan_theta_max(self) -> float:
        """tan of the largest angle from the axis that is monotonic and may reach the image."""
        theta = np.linspace(0.0, np.pi / 2 - 1e-6, 20001)
        bad = np.flatnonzero(np.diff(self._theta_d(theta)) <= 0)
        theta_lim = float(theta[bad[0]]) if bad.size else float(theta[-1])
        tt, ph = np.meshgrid(np.linspace(0.0, theta_lim, 400), np.linspace(0.0, 2 * np.pi, 361))
        tt, ph = tt.ravel(), ph.ravel()
        uv = self._pixels_from_angle(tt, np.cos(ph), np.sin(ph))
        mw, mh = _FOV_MARGIN * self.width, _FOV_MARGIN * self.height
        hit = (uv[:, 0] >= -0.5 - mw) & (uv[:, 0] < self.width - 0.5 + mw) \
            & (uv[:, 1] >= -0.5 - mh) & (uv[:, 1] < self.height - 0.5 + mh)
        if not np.any(hit):
            return 0.0
        theta_max = min(theta_lim, float(tt[hit].max()) + 2.0 * theta_lim / 399)
        return float(np.tan(theta_max))

    def fov_keep(self, x: np.ndarray, y: np.ndarray, z: np.ndarray,
                 min_depth_m: float = DEFAULT_MIN_DEPTH_M) -> np.ndarray:
        t = self._tan_theta_max
        return (z > min_depth_m) & (x * x + y * y <= (t * t) * (z * z))

    def unproject(self, uv: np.ndarray, depth_m: np.ndarray) -> np.ndarray:
        uv = np.asarray(uv, dtype=np.float64).reshape(1, -1, 2)
        crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
        xy = cv2.fisheye.undistortPoints(uv, self._K, self.D, criteria=crit).reshape(-1, 2)
        d = np.asarray(depth_m, dtype=np.float64).reshape(-1, 1)
        return np.hstack([xy * d, d])

    def describe(self) -> str:
        return f"fisheye {self.width}x{self.height} (Kannala-Brandt)"


class RectifiedCamera(CameraModel):
    """A rectified camera of a stereo rig: ``[u w, v w, w] = P (R_rect p_ref)``.

    The camera frame of this model is the (unrectified) reference camera frame, e.g. KITTI's
    camera 0 frame that ``Tr_velo_to_cam`` maps into; ``R_rect`` (KITTI ``R0_rect``) rotates it
    into the rectified frame and ``P = K_rect [I | t]`` (KITTI ``P2``) projects, including this
    camera's offset ``t`` from the reference camera.
    """

    kind = "rectified"

    def __init__(self, P: np.ndarray, R_rect: np.ndarray, width: int, height: int):
        self.width, self.height = validate.check_image_size(width, height, path=None, field="size")
        self.P = validate.check_projection_matrix(P, self.width, self.height, path=None, field="P")
        self.R_rect = validate.check_rotation(R_rect, path=None, field="R_rect")
        self._M = self.P @ np.vstack([np.hstack([self.R_rect, np.zeros((3, 1))]), [0.0, 0.0, 0.0, 1.0]])

    @property
    def K(self) -> np.ndarray:
        return self.P[:, :3].copy()

    @property
    def t_rect(self) -> np.ndarray:
        """Translation t of ``P = K [I | t]``: rectified reference frame -> this camera (metres)."""
        return np.linalg.solve(self.P[:, :3], self.P[:, 3])

    @property
    def center_cam(self) -> np.ndarray:
        return self.R_rect.T @ (-self.t_rect)

    def linear_matrix(self) -> np.ndarray:
        return self._M

    def unproject(self, uv: np.ndarray, depth_m: np.ndarray) -> np.ndarray:
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        d = np.asarray(depth_m, dtype=np.float64).reshape(-1, 1)
        Kinv = np.linalg.inv(self.P[:, :3])
        rays = np.hstack([uv, np.ones((len(uv), 1))]) @ Kinv.T
        p_rect = rays * d - self.t_rect
        return p_rect @ self.R_rect        # R_rect^T applied to each row

    def describe(self) -> str:
        return f"rectified {self.width}x{self.height} (P R_rect)"
