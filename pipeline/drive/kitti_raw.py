"""A drive in the KITTI raw layout (``*_sync`` folders), plus segfuse/ extras for what KITTI
lacks (ground truth, per-point times, 100 Hz poses). See docs/drive_format.md.

Writer: :class:`KittiRawWriter` (through ``pipeline.drive.io.open_writer``).
Reader: :class:`KittiRawDrive` (through ``open_drive``) reads our drives exactly and real
KITTI raw drives, whose calibration files sit in the parent (date) folder; these have no
ground truth and their poses come from the OXTS records (10 Hz).

Timestamps are written and read as UTC ("YYYY-MM-DD HH:MM:SS.fffffffff", nanoseconds);
KITTI's own files carry local time without a zone and are read the same way.
cv2 is imported inside the functions.
"""
from __future__ import annotations

import json
import logging
import math
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from pipeline.drive.common import (
    NS_PER_S,
    SWEEP_PERIOD_NS,
    CheckedFrame,
    box_from_dict,
    box_to_dict,
    calib_from_dict,
    calib_to_dict,
    check_calib,
    check_frame,
    class_name,
    empty_poses,
    lane_from_dict,
    lane_to_dict,
    meta_from_json,
    meta_to_json,
    pose_window_ns,
    select_poses,
    taxonomy_names,
    transform,
)
from pipeline.drive.io import Drive
from pipeline.drive.types import DriveCalib, DriveFrame, DriveMeta
from pipeline.errors import CalibrationError, InputDataError
from pipeline.types import CameraFrame, LidarSweep

log = logging.getLogger(__name__)

CAMERA = "02"                     # our camera is KITTI's left colour camera
KITTI_CAMERA_ID = "image_02"      # camera_id / lidar_id given to real KITTI drives
KITTI_LIDAR_ID = "velodyne"
EXTRAS = "segfuse"
PNG_COMPRESSION = 1               # zlib level for PNGs: 1 is ~4x faster to write than 3, ~10% larger

# OXTS records: the world frame's x axis points east, y north, z up; world (0, 0, 0) is at
# this WGS84 position (Karlsruhe, where KITTI was recorded).
OXTS_ORIGIN_LAT_DEG = 49.011
OXTS_ORIGIN_LON_DEG = 8.416
OXTS_ORIGIN_ALT_M = 112.0
EARTH_RADIUS_M = 6378137.0
GRAVITY_M_S2 = 9.81
OXTS_FIELDS = ("lat", "lon", "alt", "roll", "pitch", "yaw", "vn", "ve", "vf", "vl", "vu", "ax", "ay", "az",
               "af", "al", "au", "wx", "wy", "wz", "wf", "wl", "wu", "pos_accuracy", "vel_accuracy",
               "navstat", "numsats", "posmode", "velmode", "orimode")
OXTS_DATAFORMAT = """lat:   latitude of the oxts-unit (deg)
lon:   longitude of the oxts-unit (deg)
alt:   altitude of the oxts-unit (m)
roll:  roll angle (rad),    0 = level, positive = left side up,      range: -pi   .. +pi
pitch: pitch angle (rad),   0 = level, positive = front down,        range: -pi/2 .. +pi/2
yaw:   heading (rad),       0 = east,  positive = counter clockwise, range: -pi   .. +pi
vn:    velocity towards north (m/s)
ve:    velocity towards east (m/s)
vf:    forward velocity, i.e. parallel to earth-surface (m/s)
vl:    leftward velocity, i.e. parallel to earth-surface (m/s)
vu:    upward velocity, i.e. perpendicular to earth-surface (m/s)
ax:    acceleration in x, i.e. in direction of vehicle front (m/s^2)
ay:    acceleration in y, i.e. in direction of vehicle left (m/s^2)
az:    acceleration in z, i.e. in direction of vehicle top (m/s^2)
af:    forward acceleration (m/s^2)
al:    leftward acceleration (m/s^2)
au:    upward acceleration (m/s^2)
wx:    angular rate around x (rad/s)
wy:    angular rate around y (rad/s)
wz:    angular rate around z (rad/s)
wf:    angular rate around forward axis (rad/s)
wl:    angular rate around leftward axis (rad/s)
wu:    angular rate around upward axis (rad/s)
pos_accuracy:  position accuracy (north/east in m)
vel_accuracy:  velocity accuracy (north/east in m/s)
navstat:       navigation status
numsats:       number of satellites tracked by primary GPS receiver
posmode:       position mode of primary GPS receiver
velmode:       velocity mode of primary GPS receiver
orimode:       orientation mode of primary GPS receiver
"""
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


IO_THREADS = 2                    # PNG encode/decode threads (cv2 releases the GIL)


def _imwrite_png(path: Path, image: np.ndarray, level: int) -> None:
    import cv2

    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, level]):
        raise InputDataError("cv2.imwrite failed", path=path)


def _imread(path: Path) -> np.ndarray | None:
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def frame_name(index: int) -> str:
    return f"{index:010d}"


# --- Timestamps -----------------------------------------------------------------------------

def format_timestamps(stamps_ns: np.ndarray | list[int]) -> list[str]:
    """int64 ns since the epoch (UTC) -> KITTI lines "YYYY-MM-DD HH:MM:SS.fffffffff"."""
    arr = np.asarray(stamps_ns, np.int64).astype("datetime64[ns]")
    return [s.replace("T", " ") for s in np.datetime_as_string(arr, unit="ns")]


def parse_timestamps(path: str | Path) -> np.ndarray:
    """A KITTI timestamps file -> (N,) int64 ns since the epoch (read as UTC). Blank lines at
    the end are ignored; a malformed line raises InputDataError naming file and line."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputDataError(f"cannot read timestamps: {exc.strerror or exc}", path=path) from exc
    while lines and not lines[-1].strip():
        lines.pop()
    out = np.empty(len(lines), np.int64)
    for i, line in enumerate(lines):
        text = line.strip()
        try:
            date, clock = text.split(" ")
            whole, _, frac = clock.partition(".")
            if len(frac) > 9 or (frac and not frac.isdigit()) or len(whole) != 8:
                raise ValueError(text)
            out[i] = (np.datetime64(f"{date}T{whole}", "s").astype(np.int64) * NS_PER_S
                      + int(frac.ljust(9, "0") or 0))
        except ValueError as exc:
            raise InputDataError(f"malformed timestamp {text!r} (expected 'YYYY-MM-DD HH:MM:SS.fffffffff')",
                                 path=path, field=f"line {i + 1}") from exc
    return out


def _calib_time(stamp_ns: int) -> str:
    d = np.datetime64(int(stamp_ns), "ns").astype("datetime64[s]").item()
    return f"{d.day:02d}-{_MONTHS[d.month - 1]}-{d.year} {d.hour:02d}:{d.minute:02d}:{d.second:02d}"


# --- Calibration files --------------------------------------------------------------------------

def parse_calib_file(path: str | Path) -> dict[str, Any]:
    """A KITTI ``key: values`` calibration file -> {key: float64 array}; ``calib_time`` stays a
    string. Parsed by calibration.io_util, the one reader of this format."""
    from calibration.io_util import get_numbers, read_key_values

    path = Path(path)
    raw = read_key_values(path)
    return {key: text if key == "calib_time" else get_numbers(raw, key, len(text.split()), path=path)
            for key, text in raw.items()}


def _need(calib: dict[str, Any], key: str, size: int, path: Path) -> np.ndarray:
    if key not in calib:
        raise CalibrationError("required key is missing", path=path, field=key)
    value = calib[key]
    if not isinstance(value, np.ndarray) or value.size != size:
        raise CalibrationError(f"expected {size} numbers", path=path, field=key)
    return value


def find_calib_dir(drive_dir: Path) -> Path:
    """KITTI keeps calib_*.txt in the date folder above the drive; ours in the drive folder."""
    for d in (drive_dir, drive_dir.parent):
        if (d / "calib_cam_to_cam.txt").is_file():
            return d
    raise CalibrationError("calib_cam_to_cam.txt not found in the drive folder or its parent",
                           path=drive_dir / "calib_cam_to_cam.txt")


def calib_from_kitti_files(calib_dir: Path, camera: str = CAMERA, *, camera_id: str = KITTI_CAMERA_ID,
                           lidar_id: str = KITTI_LIDAR_ID, rectified: bool = True) -> DriveCalib:
    """DriveCalib of KITTI camera ``camera`` and the Velodyne from the three calib files.

    rectified=True (real ``*_sync`` images are rectified): K from P_rect_xx, no distortion,
    size S_rect_xx, the camera frame is the rectified one. rectified=False: K_xx, D_xx, S_xx
    (what our writer stores; it writes R_rect_00 = I and P_rect = [K | 0], so both agree).
    The base frame is KITTI's IMU (x forward, y left, z up), from calib_imu_to_velo.txt.
    """
    p_cc, p_vc, p_iv = (calib_dir / n for n in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt",
                                                 "calib_imu_to_velo.txt"))
    cc, vc, iv = parse_calib_file(p_cc), parse_calib_file(p_vc), parse_calib_file(p_iv)
    T_cam0_from_velo = transform(_need(vc, "R", 9, p_vc).reshape(3, 3), _need(vc, "T", 3, p_vc))
    T_velo_from_imu = transform(_need(iv, "R", 9, p_iv).reshape(3, 3), _need(iv, "T", 3, p_iv))
    R_rect = np.eye(4)
    R_rect[:3, :3] = _need(cc, "R_rect_00", 9, p_cc).reshape(3, 3)
    P = _need(cc, f"P_rect_{camera}", 12, p_cc).reshape(3, 4)
    if rectified:
        K = P[:, :3].copy()
        dist = np.zeros(5)
        size = _need(cc, f"S_rect_{camera}", 2, p_cc)
    else:
        K = _need(cc, f"K_{camera}", 9, p_cc).reshape(3, 3)
        dist = _need(cc, f"D_{camera}", 5, p_cc).copy()
        size = _need(cc, f"S_{camera}", 2, p_cc)
    try:
        t_rect = np.linalg.solve(P[:, :3], P[:, 3])
    except np.linalg.LinAlgError as exc:
        raise CalibrationError("singular P_rect", path=p_cc, field=f"P_rect_{camera}") from exc
    T_cam_from_lidar = transform(np.eye(3), t_rect) @ R_rect @ T_cam0_from_velo
    T_base_from_lidar = np.linalg.inv(T_velo_from_imu)
    return DriveCalib(camera_id=camera_id, width=round(float(size[0])), height=round(float(size[1])), K=K, dist=dist,
                      T_base_from_cam=T_base_from_lidar @ np.linalg.inv(T_cam_from_lidar), lidar_id=lidar_id,
                      T_base_from_lidar=T_base_from_lidar)


def _fmt(values: Any) -> str:
    return " ".join(repr(float(v)) for v in np.asarray(values, np.float64).reshape(-1))


def write_kitti_calib(out_dir: Path, calib: DriveCalib, calib_time: str) -> None:
    """calib_cam_to_cam.txt (our camera as 00 and 02), calib_velo_to_cam.txt, calib_imu_to_velo.txt.
    Numbers are written in full precision (repr), which KITTI readers parse like %e."""
    K = np.asarray(calib.K, np.float64)
    P = np.hstack([K, np.zeros((3, 1))])
    size = [calib.width, calib.height]
    lines = [f"calib_time: {calib_time}", "corner_dist: 0.0"]
    for cam in ("00", "02"):   # one camera: 02, and 00 (the reference) the same
        lines += [f"S_{cam}: {_fmt(size)}", f"K_{cam}: {_fmt(K)}", f"D_{cam}: {_fmt(calib.dist)}",
                  f"R_{cam}: {_fmt(np.eye(3))}", f"T_{cam}: {_fmt(np.zeros(3))}", f"S_rect_{cam}: {_fmt(size)}",
                  f"R_rect_{cam}: {_fmt(np.eye(3))}", f"P_rect_{cam}: {_fmt(P)}"]
    (out_dir / "calib_cam_to_cam.txt").write_text("\n".join(lines) + "\n")
    T_cl = calib.T_cam_from_lidar
    (out_dir / "calib_velo_to_cam.txt").write_text(
        f"calib_time: {calib_time}\nR: {_fmt(T_cl[:3, :3])}\nT: {_fmt(T_cl[:3, 3])}\n"
        f"delta_f: 0.0 0.0\ndelta_c: 0.0 0.0\n")
    T_lb = np.linalg.inv(np.asarray(calib.T_base_from_lidar, np.float64))
    (out_dir / "calib_imu_to_velo.txt").write_text(
        f"calib_time: {calib_time}\nR: {_fmt(T_lb[:3, :3])}\nT: {_fmt(T_lb[:3, 3])}\n")


# --- OXTS -------------------------------------------------------------------------------------

def _rpy_from_R(R: np.ndarray) -> tuple[float, float, float]:
    """KITTI: R = Rz(yaw) Ry(pitch) Rx(roll)."""
    pitch = math.atan2(-R[2, 0], math.hypot(R[0, 0], R[1, 0]))
    return math.atan2(R[2, 1], R[2, 2]), pitch, math.atan2(R[1, 0], R[0, 0])


def _R_from_rpy(roll: np.ndarray, pitch: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    R = np.empty(np.shape(roll) + (3, 3))
    R[..., 0, 0], R[..., 0, 1], R[..., 0, 2] = cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr
    R[..., 1, 0], R[..., 1, 1], R[..., 1, 2] = sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr
    R[..., 2, 0], R[..., 2, 1], R[..., 2, 2] = -sp, cp * sr, cp * cr
    return R


def _mercator_scale_for_first(y_first_m: float) -> float:
    """KITTI scales its Mercator projection by cos(latitude of the first record); find that
    latitude for our fixed origin so that reading our OXTS back gives our world positions."""
    scale = math.cos(math.radians(OXTS_ORIGIN_LAT_DEG))
    for _ in range(5):
        my0 = scale * EARTH_RADIUS_M * math.log(math.tan(math.radians(90 + OXTS_ORIGIN_LAT_DEG) / 2))
        lat = math.degrees(2 * math.atan(math.exp((my0 + y_first_m) / (EARTH_RADIUS_M * scale)))) - 90
        scale = math.cos(math.radians(lat))
    return scale


def _latlon(x: float, y: float, scale: float) -> tuple[float, float]:
    er = EARTH_RADIUS_M
    mx = scale * OXTS_ORIGIN_LON_DEG * math.pi * er / 180 + x
    my = scale * er * math.log(math.tan(math.radians(90 + OXTS_ORIGIN_LAT_DEG) / 2)) + y
    return math.degrees(2 * math.atan(math.exp(my / (er * scale)))) - 90, mx * 180 / (math.pi * er * scale)


def oxts_record(stamps_ns: np.ndarray, T_world_from_base: np.ndarray, k: int, scale: float) -> list[float]:
    """The 30 OXTS values at pose ``k``; rates and accelerations by finite differences over
    the neighbouring poses (zero when there are none)."""
    T = T_world_from_base
    R, p = T[k, :3, :3], T[k, :3, 3]
    roll, pitch, yaw = _rpy_from_R(R)
    lat, lon = _latlon(float(p[0]), float(p[1]), scale)
    t_s = (stamps_ns - stamps_ns[k]).astype(np.float64) / NS_PER_S
    v = np.zeros(3)
    a = np.zeros(3)
    w_body = np.zeros(3)
    if len(stamps_ns) > 1:
        i0, i1 = max(k - 1, 0), min(k + 1, len(stamps_ns) - 1)
        v = (T[i1, :3, 3] - T[i0, :3, 3]) / (t_s[i1] - t_s[i0])
        if len(stamps_ns) > 2:
            j = min(max(k, 1), len(stamps_ns) - 2)
            v_prev = (T[j, :3, 3] - T[j - 1, :3, 3]) / (t_s[j] - t_s[j - 1])
            v_next = (T[j + 1, :3, 3] - T[j, :3, 3]) / (t_s[j + 1] - t_s[j])
            a = (v_next - v_prev) / (0.5 * (t_s[j + 1] - t_s[j - 1]))
        dR = T[i0, :3, :3].T @ T[i1, :3, :3]
        angle = math.acos(max(-1.0, min(1.0, (np.trace(dR) - 1) / 2)))
        axis = np.array([dR[2, 1] - dR[1, 2], dR[0, 2] - dR[2, 0], dR[1, 0] - dR[0, 1]])
        s = math.sin(angle)
        w_body = (axis * (angle / (2 * s)) if s > 1e-12 else axis / 2) / (t_s[i1] - t_s[i0])
    cy, sy = math.cos(yaw), math.sin(yaw)
    R_yaw = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    v_level = R_yaw.T @ v
    a_grav = a + np.array([0.0, 0.0, GRAVITY_M_S2])    # an IMU measures specific force
    a_body, a_level = R.T @ a_grav, R_yaw.T @ a_grav
    w_level = R_yaw.T @ (R @ w_body)
    return [lat, lon, OXTS_ORIGIN_ALT_M + float(p[2]), roll, pitch, yaw, float(v[1]), float(v[0]),
            *map(float, v_level), *map(float, a_body), *map(float, a_level), *map(float, w_body),
            *map(float, w_level), 0.0, 0.0, 4, 11, 6, 6, 6]


def parse_oxts_file(path: Path) -> np.ndarray:
    try:
        values = np.array([float(v) for v in path.read_text().split()], np.float64)
    except (OSError, ValueError) as exc:
        raise InputDataError(f"cannot read OXTS record: {exc}", path=path) from exc
    if values.size != len(OXTS_FIELDS):
        raise InputDataError(f"{values.size} values, expected {len(OXTS_FIELDS)}", path=path, field="oxts")
    return values


def poses_from_oxts(records: np.ndarray) -> np.ndarray:
    """(M, 30) OXTS records -> (M, 4, 4) T_world_from_base as the KITTI devkit computes it:
    Mercator scaled by cos(first latitude), translation relative to the first record,
    R = Rz(yaw) Ry(pitch) Rx(roll). The world frame: x east, y north, z up."""
    rec = np.atleast_2d(records)
    if not rec.size:
        return np.zeros((0, 4, 4))
    er = EARTH_RADIUS_M
    scale = math.cos(math.radians(rec[0, 0]))
    mx = scale * rec[:, 1] * math.pi * er / 180
    my = scale * er * np.log(np.tan(np.radians(90 + rec[:, 0]) / 2))
    t = np.stack([mx, my, rec[:, 2]], axis=1)
    T = np.tile(np.eye(4), (rec.shape[0], 1, 1))
    T[:, :3, :3] = _R_from_rpy(rec[:, 3], rec[:, 4], rec[:, 5])
    T[:, :3, 3] = t - t[0]
    return T


# --- Writer -----------------------------------------------------------------------------------

class KittiRawWriter:
    """Writes the KITTI raw layout into ``drive_dir`` (which must not exist)."""

    def __init__(self, drive_dir: Path, calib: DriveCalib, meta: DriveMeta, *,
                 png_compression: int = PNG_COMPRESSION) -> None:
        self.path = Path(drive_dir)
        check_calib(calib, self.path)
        self.calib = calib
        self._meta_json = meta_to_json(meta)
        self._png = int(png_compression)
        self._class_names = taxonomy_names()
        self.path.mkdir()
        for sub in ("image_02/data", "velodyne_points/data", "oxts/data", f"{EXTRAS}/point_t_ns",
                    f"{EXTRAS}/labels", f"{EXTRAS}/semantic", f"{EXTRAS}/instance", f"{EXTRAS}/boxes",
                    f"{EXTRAS}/lanes"):
            (self.path / sub).mkdir(parents=True)
        self._files: dict[str, TextIO] = {}
        for key in ("image_02/timestamps.txt", "velodyne_points/timestamps.txt",
                    "velodyne_points/timestamps_start.txt", "velodyne_points/timestamps_end.txt",
                    "oxts/timestamps.txt", f"{EXTRAS}/poses.txt"):
            self._files[key] = open(self.path / key, "w")
        self._count = 0
        self._last_pose_ns: int | None = None
        self._scale: float | None = None
        self._period_ns = int(NS_PER_S / meta.rate_hz) if meta.rate_hz > 0 else 100_000_000
        self._pool = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="kitti-png")
        self._pending: list[Future[None]] = []

    def _imwrite(self, path: Path, image: np.ndarray) -> None:
        """Encode a PNG on the pool (cv2 releases the GIL); ``_wait`` collects the results."""
        self._pending.append(self._pool.submit(_imwrite_png, path, image, self._png))

    def _wait(self) -> None:
        pending, self._pending = self._pending, []
        for fut in pending:
            fut.result()

    def write(self, frame: DriveFrame) -> None:
        c = check_frame(frame, self.calib, self.path)
        if (c.point_class is None) != (c.point_instance is None):
            raise InputDataError("point_class and point_instance must both be given or both be None",
                                 path=self.path, field="point_class")
        if not c.pose_stamps_ns.size:
            raise InputDataError("KITTI raw needs at least one ego pose per frame (OXTS record)",
                                 path=self.path, field="pose_stamps_ns")
        name = frame_name(self._count)
        cam_ns, lid_ns = int(frame.camera.stamp_ns), int(frame.lidar.stamp_ns)
        if self._count == 0:
            write_kitti_calib(self.path, self.calib, _calib_time(cam_ns))
        d = self.path
        self._imwrite(d / "image_02" / "data" / f"{name}.png", c.image)
        c.points.tofile(d / "velodyne_points" / "data" / f"{name}.bin")
        ex = d / EXTRAS
        if c.t_offset_u32 is not None:
            c.t_offset_u32.astype("<u4").tofile(ex / "point_t_ns" / f"{name}.bin")
        if c.point_class is not None:
            labels = c.point_class.astype("<u4") | (c.point_instance.astype("<u4") << 16)
            labels.tofile(ex / "labels" / f"{name}.label")
        if c.semantic is not None:
            self._imwrite(ex / "semantic" / f"{name}.png", c.semantic)
        if c.instance is not None:
            self._imwrite(ex / "instance" / f"{name}.png", c.instance)
        if c.has_gt or frame.boxes or frame.lanes:
            (ex / "boxes" / f"{name}.json").write_text(json.dumps(
                [box_to_dict(b, class_name(self._class_names, b.class_id, self.path)) for b in frame.boxes]))
            (ex / "lanes" / f"{name}.json").write_text(json.dumps([lane_to_dict(lane) for lane in frame.lanes]))
        self._write_poses(c, cam_ns)
        sweep_end = lid_ns + (int(c.t_offset_u32.max()) if c.t_offset_u32 is not None and c.t_offset_u32.size
                              else self._period_ns)
        self._wait()
        f = self._files
        f["image_02/timestamps.txt"].write(format_timestamps([cam_ns])[0] + "\n")
        start, mid, end = format_timestamps([lid_ns, (lid_ns + sweep_end) // 2, sweep_end])
        f["velodyne_points/timestamps_start.txt"].write(start + "\n")
        f["velodyne_points/timestamps.txt"].write(mid + "\n")
        f["velodyne_points/timestamps_end.txt"].write(end + "\n")
        self._count += 1

    def _write_poses(self, c: CheckedFrame, cam_ns: int) -> None:
        stamps, Ts = c.pose_stamps_ns, c.T_world_from_base
        # OXTS: one record per frame, at the pose nearest the camera stamp
        k = int(np.argmin(np.abs(stamps - cam_ns)))
        if self._scale is None:
            self._scale = _mercator_scale_for_first(float(Ts[k, 1, 3]))
        rec = oxts_record(stamps, Ts, k, self._scale)
        (self.path / "oxts" / "data" / f"{frame_name(self._count)}.txt").write_text(
            " ".join(repr(float(v)) if i < 25 else str(int(v)) for i, v in enumerate(rec)) + "\n")
        self._files["oxts/timestamps.txt"].write(format_timestamps([stamps[k]])[0] + "\n")
        if self._last_pose_ns is not None:
            keep = stamps > self._last_pose_ns
            stamps, Ts = stamps[keep], Ts[keep]
        if stamps.size:
            rows = [f"{s} " + " ".join(repr(v) for v in T_[:3, :].reshape(-1).tolist())
                    for s, T_ in zip(stamps.tolist(), Ts)]
            self._files[f"{EXTRAS}/poses.txt"].write("\n".join(rows) + "\n")
            self._last_pose_ns = int(stamps[-1])

    def close(self) -> None:
        self._pool.shutdown()
        for f in self._files.values():
            f.close()
        ex = self.path / EXTRAS
        (ex / "drive_meta.json").write_text(self._meta_json + "\n")
        (ex / "calib.json").write_text(json.dumps(calib_to_dict(self.calib), indent=1) + "\n")
        (self.path / "oxts" / "dataformat.txt").write_text(OXTS_DATAFORMAT)
        if self._count == 0:
            write_kitti_calib(self.path, self.calib, _calib_time(0))

    def abort(self) -> None:
        self._pool.shutdown(cancel_futures=True)
        for f in self._files.values():
            f.close()


# --- Reader -----------------------------------------------------------------------------------

def parse_poses_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """segfuse/poses.txt: per line stamp_ns and the 12 values of the 3x4 T_world_from_base."""
    try:
        tokens = path.read_text().split()
    except OSError as exc:
        raise InputDataError(f"cannot read poses: {exc.strerror or exc}", path=path) from exc
    if len(tokens) % 13:
        raise InputDataError("expected 13 values per line (stamp_ns, 3x4 T_world_from_base)", path=path)
    arr = np.array(tokens, dtype=object).reshape(-1, 13)
    try:
        stamps = np.array([int(s) for s in arr[:, 0]], np.int64)
        T = np.tile(np.eye(4), (arr.shape[0], 1, 1))
        T[:, :3, :] = arr[:, 1:].astype(np.float64).reshape(-1, 3, 4)
    except ValueError as exc:
        raise InputDataError(f"not numbers: {exc}", path=path) from exc
    return stamps, T


def sweep_start_stamps(velo: Path, mid: np.ndarray, n: int) -> np.ndarray:
    """The LiDAR stamp of each frame as the sweep start (our convention, and what a config's
    ``lidar_offset_ms`` is measured from), in every layout KITTI raw folders come in:

    - ``timestamps_start.txt`` with one line per frame: those lines;
    - a start file of another length (a clip cut from a longer drive keeps the full drive's
      start/end files): for each frame, the start of the sweep whose [start, end] holds the
      frame's ``timestamps.txt`` stamp (end from ``timestamps_end.txt``, else the next start);
    - no start file, or a frame no sweep holds: ``timestamps.txt`` (KITTI's mid-sweep stamp,
      when the LiDAR faces forward) less half the sweep period, measured from the stamps.
    """
    start_path = velo / "timestamps_start.txt"
    if start_path.is_file():
        start = parse_timestamps(start_path)
        if start.size == n:
            return start
    half = SWEEP_PERIOD_NS // 2
    if n > 1:
        half = int(np.median(np.diff(mid))) // 2
    out = mid - half
    if not start_path.is_file():
        log.warning("%s: no timestamps_start.txt; LiDAR stamps are timestamps.txt less half a sweep (%.1f ms)",
                    velo, half / 1e6)
        return out
    start = np.sort(start)
    end_path = velo / "timestamps_end.txt"
    end = np.sort(parse_timestamps(end_path)) if end_path.is_file() else None
    if end is None or end.size != start.size:
        end = np.append(start[1:], start[-1] + 2 * half)
    k = np.searchsorted(start, mid, side="right") - 1
    ok = (k >= 0) & (mid <= end[np.clip(k, 0, None)])
    out[ok] = start[k[ok]]
    log.info("%s: %d lines for %d frames (a clip of a longer drive): %d LiDAR stamps are the start of the sweep "
             "holding each frame's stamp, %d are timestamps.txt less half a sweep", start_path, start.size, n,
             int(ok.sum()), int((~ok).sum()))
    return out


class KittiRawDrive(Drive):
    """A KITTI raw drive folder opened for reading: ours (with segfuse/) or a real one."""

    format = "kitti-raw"

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        ex = path / EXTRAS
        self._ours = (ex / "drive_meta.json").is_file()
        if self._ours:
            meta = meta_from_json((ex / "drive_meta.json").read_text(), ex / "drive_meta.json")
            calib_path = ex / "calib.json"
            try:
                calib = calib_from_dict(json.loads(calib_path.read_text()), calib_path)
            except (OSError, ValueError) as exc:
                raise CalibrationError(f"cannot read calibration: {exc}", path=calib_path) from exc
        else:
            meta = None
            calib = calib_from_kitti_files(find_calib_dir(path))
        self._cam_stamps = parse_timestamps(path / "image_02" / "timestamps.txt")
        n = self._cam_stamps.size
        velo = path / "velodyne_points"
        lid = parse_timestamps(velo / "timestamps.txt")
        if lid.size != n:
            raise InputDataError(f"{lid.size} LiDAR timestamps for {n} camera timestamps", path=velo / "timestamps.txt")
        self._lidar_stamps = sweep_start_stamps(velo, lid, n)
        if self._ours:
            self._pose_stamps, self._poses = parse_poses_file(ex / "poses.txt")
        else:
            self._pose_stamps, self._poses = self._oxts_poses(path / "oxts")
        self._pool: ThreadPoolExecutor | None = None
        order = np.argsort(self._pose_stamps, kind="stable")
        self._pose_stamps, self._poses = self._pose_stamps[order], self._poses[order]
        super().__init__(path, calib, meta, n)

    @staticmethod
    def _oxts_poses(oxts_dir: Path) -> tuple[np.ndarray, np.ndarray]:
        if not (oxts_dir / "timestamps.txt").is_file():
            log.warning("%s: no OXTS records; frames carry no poses", oxts_dir)
            return empty_poses()
        stamps = parse_timestamps(oxts_dir / "timestamps.txt")
        have = [i for i in range(stamps.size) if (oxts_dir / "data" / f"{frame_name(i)}.txt").is_file()]
        if len(have) < stamps.size:
            log.warning("%s: %d of %d OXTS records are missing; frames near them carry fewer poses",
                        oxts_dir / "data", stamps.size - len(have), stamps.size)
        records = np.array([parse_oxts_file(oxts_dir / "data" / f"{frame_name(i)}.txt")
                            for i in have]).reshape(-1, len(OXTS_FIELDS))
        return stamps[have], poses_from_oxts(records)

    def _io_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="kitti-png")
        return self._pool

    def _read_frame(self, index: int) -> DriveFrame:
        import cv2

        name = frame_name(index)
        d = self.path
        ex = d / EXTRAS
        c = self.calib
        pool = self._io_pool()
        img_path = d / "image_02" / "data" / f"{name}.png"
        pngs = {"image": pool.submit(_imread, img_path)}
        if self._ours:
            for kind in ("semantic", "instance"):
                path = ex / kind / f"{name}.png"
                if path.is_file():
                    pngs[kind] = pool.submit(_imread, path)
        results = {k: f.result() for k, f in pngs.items()}   # wait for all before raising
        image = results["image"]
        if image is None:
            raise InputDataError("missing or undecodable image", path=img_path, field="image_02")
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        elif image.shape[2] == 4:
            image = np.ascontiguousarray(image[:, :, :3])
        if image.dtype != np.uint8 or image.shape != (c.height, c.width, 3):
            raise InputDataError(f"image {image.shape} {image.dtype}, calibration says ({c.height}, {c.width}, 3) "
                                 "uint8", path=img_path, field="image_02")
        bin_path = d / "velodyne_points" / "data" / f"{name}.bin"
        raw = self._read_bytes(bin_path, "velodyne_points")
        if raw.size % 16:
            raise InputDataError(f"{raw.size} bytes is not a multiple of 16 (x, y, z, reflectance float32)",
                                 path=bin_path, field="velodyne_points")
        points = raw.view("<f4").reshape(-1, 4).astype(np.float32)
        n = points.shape[0]
        t_off = semantic = instance = point_class = point_instance = None
        boxes, lanes = [], []
        if self._ours:
            t_path = ex / "point_t_ns" / f"{name}.bin"
            if t_path.is_file():
                t_off = self._sized(t_path, n, "point_t_ns").view("<u4").astype(np.int64)
            label_path = ex / "labels" / f"{name}.label"
            if label_path.is_file():
                labels = self._sized(label_path, n, "labels").view("<u4")
                if np.any((labels & 0xFFFF) > 255):
                    raise InputDataError("class ids above 255", path=label_path, field="labels")
                point_class = (labels & 0xFFFF).astype(np.uint8)
                point_instance = (labels >> 16).astype(np.uint16)
            if "semantic" in results:
                semantic = self._gt_png(results["semantic"], ex / "semantic" / f"{name}.png", np.uint8)
            if "instance" in results:
                instance = self._gt_png(results["instance"], ex / "instance" / f"{name}.png", np.uint16)
            boxes = [box_from_dict(b) for b in self._json(ex / "boxes" / f"{name}.json")]
            lanes = [lane_from_dict(lane) for lane in self._json(ex / "lanes" / f"{name}.json")]
        cam_ns, lid_ns = int(self._cam_stamps[index]), int(self._lidar_stamps[index])
        stamps, Ts = select_poses(self._pose_stamps, self._poses, pose_window_ns(cam_ns, lid_ns))
        if not stamps.size and self._pose_stamps.size and not self._ours:
            # 10 Hz OXTS may leave the window empty: take the nearest record within one sweep
            k = int(np.argmin(np.abs(self._pose_stamps - cam_ns)))
            if abs(int(self._pose_stamps[k]) - cam_ns) <= SWEEP_PERIOD_NS:
                stamps, Ts = self._pose_stamps[k:k + 1].copy(), self._poses[k:k + 1].copy()
        return DriveFrame(index=index, camera=CameraFrame(c.camera_id, cam_ns, image),
                          lidar=LidarSweep(c.lidar_id, lid_ns, points, t_off), semantic=semantic,
                          instance=instance, point_class=point_class, point_instance=point_instance,
                          boxes=boxes, lanes=lanes, pose_stamps_ns=stamps, T_world_from_base=Ts)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    @staticmethod
    def _read_bytes(path: Path, field: str) -> np.ndarray:
        try:
            return np.fromfile(path, np.uint8)
        except OSError as exc:
            raise InputDataError(f"cannot read: {exc.strerror or exc}", path=path, field=field) from exc

    def _sized(self, path: Path, n: int, field: str) -> np.ndarray:
        raw = self._read_bytes(path, field)
        if raw.size != 4 * n:
            raise InputDataError(f"{raw.size} bytes, expected {4 * n} (4 per point, {n} points)", path=path,
                                 field=field)
        return raw

    def _gt_png(self, arr: np.ndarray | None, path: Path, dtype: type) -> np.ndarray:
        shape = (self.calib.height, self.calib.width)
        if arr is None or arr.dtype != dtype or arr.shape != shape:
            got = "undecodable" if arr is None else f"{arr.shape} {arr.dtype}"
            raise InputDataError(f"{got}, expected {shape} {np.dtype(dtype).name}", path=path,
                                 field=path.parent.name)
        return arr

    @staticmethod
    def _json(path: Path) -> list[dict[str, Any]]:
        if not path.is_file():
            return []
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, list):
                raise ValueError("expected a list")
            return data
        except (OSError, ValueError) as exc:
            raise InputDataError(f"not valid JSON: {exc}", path=path, field=path.parent.name) from exc
