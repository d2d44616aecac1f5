"""Small readers shared by the calibration loaders: ``key: numbers`` text files and image sizes."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from pipeline.errors import CalibrationError, InputDataError


def read_key_values(path: str | Path) -> dict[str, str]:
    """Read a KITTI-style calibration file (``key: value ...`` per line) -> {key: raw value text}.

    Blank lines are skipped; a line without ``:`` or a repeated key is an error naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise CalibrationError("calibration file not found", path=path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"cannot read calibration file: {exc}", path=path) from None
    values: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, rest = line.partition(":")
        key = key.strip()
        if not sep or not key:
            raise CalibrationError(f"line {lineno} is not 'key: values': {line[:60]!r}", path=path,
                                   field=f"line {lineno}")
        if key in values:
            raise CalibrationError(f"key repeated on line {lineno}", path=path, field=key)
        values[key] = rest.strip()
    return values


def get_numbers(values: dict[str, str], key: str, count: int, *, path: str | Path,
                required: bool = True) -> np.ndarray | None:
    """The ``count`` numbers stored under ``key`` as float64 (None when absent and not required)."""
    if key not in values:
        if required:
            raise CalibrationError("required key is missing (file truncated?)", path=path, field=key)
        return None
    parts = values[key].split()
    try:
        arr = np.array([float(p) for p in parts], dtype=np.float64)
    except ValueError:
        bad = next(p for p in parts if not _is_float(p))
        raise CalibrationError(f"not a number: {bad!r}", path=path, field=key) from None
    if arr.size != count:
        raise CalibrationError(f"expected {count} numbers, got {arr.size} (file truncated?)", path=path, field=key)
    if not np.all(np.isfinite(arr)):
        raise CalibrationError("contains a NaN or infinite value", path=path, field=key)
    return arr


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of a PNG or JPEG from its header (no decoding); other formats via OpenCV."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(32)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
                w, h = struct.unpack(">II", head[16:24])
                return int(w), int(h)
            if head[:2] == b"\xff\xd8":
                f.seek(2)
                return _jpeg_size(f, path)
    except OSError as exc:
        raise InputDataError(f"cannot read image: {exc}", path=path) from None
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputDataError("not a readable image", path=path)
    return int(img.shape[1]), int(img.shape[0])


def _jpeg_size(f, path: Path) -> tuple[int, int]:
    while True:
        marker = f.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            raise InputDataError("corrupt JPEG header", path=path)
        code = marker[1]
        if code in (0xD8, 0x01) or 0xD0 <= code <= 0xD7:
            continue
        length = struct.unpack(">H", f.read(2))[0]
        if code in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            data = f.read(5)
            h, w = struct.unpack(">HH", data[1:5])
            return int(w), int(h)
        f.seek(length - 2, 1)
