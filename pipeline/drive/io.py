"""Open a drive for writing or reading, whatever its format.

Writing (atomic)::

    with open_writer(out_dir, calib, meta, format="rosbag2") as writer:
        for frame in frames:
            writer.write(frame)

The drive is built in a sibling folder ``OUT.partial-<pid>`` and renamed to ``OUT`` only when
``close()`` (or the end of the ``with`` block) succeeds; an exception or Ctrl-C removes the
partial folder, and a killed process leaves it under its ``.partial-<pid>`` name, which
:func:`open_drive` refuses. An existing ``OUT`` is refused unless ``overwrite=True``.

Reading::

    drive = open_drive(path)          # rosbag2 folder, bare .mcap file or KITTI raw drive folder
    drive.calib, drive.meta, len(drive)
    for frame in drive.frames(on_error="skip"):   # lazy; corrupt frames skipped and counted
        ...
    drive.skipped                      # [SkippedFrame(index, path, reason), ...]

Light module: the format modules (and rosbags, cv2) are imported when a drive is opened.
"""
from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pipeline.drive.types import DriveCalib, DriveFrame, DriveMeta
from pipeline.errors import ConfigError, InputDataError, SegfuseError

log = logging.getLogger(__name__)

FORMATS = ("rosbag2", "kitti-raw")
PARTIAL_MARK = ".partial-"
ON_ERROR = ("raise", "skip")


# --- Writing --------------------------------------------------------------------------------

class FormatWriter(Protocol):
    """What each format implements; it writes into a folder that does not exist yet."""

    def write(self, frame: DriveFrame) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class DriveWriter:
    """Writes a drive atomically; see the module docstring. Use :func:`open_writer`."""

    def __init__(self, out_dir: str | Path, format: str, make_backend: Any, *, overwrite: bool = False,
                 background: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.format = format
        self.frames_written = 0
        if self.out_dir.exists() or self.out_dir.is_symlink():
            if not overwrite:
                raise ConfigError("output already exists; choose another path or pass overwrite=True",
                                  path=self.out_dir)
            if not self.out_dir.is_dir():
                raise ConfigError("output exists and is not a folder; not overwriting it", path=self.out_dir)
        self._overwrite = overwrite
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.staging_dir = self.out_dir.parent / f"{self.out_dir.name}{PARTIAL_MARK}{os.getpid()}"
        if self.staging_dir.exists():
            shutil.rmtree(self.staging_dir)
        self.staging_dir.mkdir()
        # The drive is built in staging/<name> so that files named after the folder (the
        # rosbag2 storage file) carry the final name.
        self._content_dir = self.staging_dir / self.out_dir.name
        self._state = "open"
        try:
            self._backend: FormatWriter = make_backend(self._content_dir)
        except BaseException:
            self._state = "aborted"
            shutil.rmtree(self.staging_dir, ignore_errors=True)
            raise
        # background=True: frames are encoded on a worker thread (queue of 2) while the caller
        # renders the next one; a failure there is raised by the next write() or by close().
        self._queue: queue.Queue[DriveFrame | None] | None = None
        self._worker: threading.Thread | None = None
        self._worker_error: BaseException | None = None
        if background:
            self._queue = queue.Queue(maxsize=2)
            self._worker = threading.Thread(target=self._work, name=f"drive-writer-{self.out_dir.name}", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        assert self._queue is not None
        while True:
            frame = self._queue.get()
            if frame is None:
                return
            if self._worker_error is None:
                try:
                    self._backend.write(frame)
                except BaseException as exc:   # handed to the caller's thread
                    self._worker_error = exc

    def _stop_worker(self) -> None:
        if self._worker is not None and self._queue is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = None

    def _raise_worker_error(self) -> None:
        if self._worker_error is not None:
            raise self._worker_error

    def write(self, frame: DriveFrame) -> None:
        if self._state != "open":
            raise ConfigError(f"writer is {self._state}; cannot write frame {frame.index}", path=self.out_dir)
        if frame.index != self.frames_written:
            raise InputDataError(f"frames must be written in order 0, 1, 2, ...: expected index "
                                 f"{self.frames_written}, got {frame.index}", path=self.out_dir, field="index")
        if self._queue is not None:
            self._raise_worker_error()
            self._queue.put(frame)
        else:
            self._backend.write(frame)
        self.frames_written += 1

    def close(self) -> None:
        """Finish the drive and move it to ``out_dir``. Any failure removes the partial folder."""
        if self._state == "closed":
            return
        if self._state != "open":
            raise ConfigError(f"writer is {self._state}; nothing to close", path=self.out_dir)
        try:
            self._stop_worker()
            self._raise_worker_error()
            self._backend.close()
            old = None
            if self.out_dir.exists() or self.out_dir.is_symlink():
                if not self._overwrite:
                    raise ConfigError("output appeared while writing; not replacing it", path=self.out_dir)
                old = self.out_dir.parent / f"{self.out_dir.name}.old-{os.getpid()}"
                if old.exists():
                    shutil.rmtree(old)
                os.rename(self.out_dir, old)
            os.rename(self._content_dir, self.out_dir)
        except BaseException:
            self._state = "aborted"
            try:
                self._backend.abort()
            except Exception as exc:  # the original error matters more
                log.debug("abort after a failed close: %s", exc)
            shutil.rmtree(self.staging_dir, ignore_errors=True)
            raise
        self._state = "closed"
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        log.info("wrote %d frames (%s) to %s", self.frames_written, self.format, self.out_dir)

    def abort(self) -> None:
        """Drop everything written so far. Safe to call more than once."""
        if self._state != "open":
            return
        self._state = "aborted"
        try:
            if self._queue is not None:
                while not self._queue.empty():   # drop what is still waiting
                    self._queue.get_nowait()
            self._stop_worker()
            self._backend.abort()
        finally:
            shutil.rmtree(self.staging_dir, ignore_errors=True)
        log.warning("aborted writing %s after %d frames; removed %s", self.out_dir, self.frames_written,
                    self.staging_dir)

    def __enter__(self) -> DriveWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def open_writer(out_dir: str | Path, calib: DriveCalib, meta: DriveMeta, format: str = "rosbag2", *,
                overwrite: bool = False, background: bool = False, **options: Any) -> DriveWriter:
    """A writer for a new drive at ``out_dir``.

    format: "rosbag2" (a rosbag2 folder with MCAP storage) or "kitti-raw" (KITTI raw layout
    plus segfuse/ extras). overwrite: replace an existing ``out_dir`` (only once the new
    drive is complete). background: encode and write frames on a worker thread; the caller
    must then not modify a frame's arrays after passing it to ``write``.
    Options: rosbag2 takes ``compression="lz4"|"zstd"|"none"``; kitti-raw ``png_compression=0..9``.
    """
    if format == "rosbag2":
        from pipeline.drive.rosbag import RosbagWriter as backend_cls
    elif format == "kitti-raw":
        from pipeline.drive.kitti_raw import KittiRawWriter as backend_cls
    else:
        raise ConfigError(f"unknown drive format '{format}' (known: {', '.join(FORMATS)})", field="format")
    if PARTIAL_MARK in Path(out_dir).name:
        raise ConfigError(f"output name must not contain '{PARTIAL_MARK}'", path=out_dir)
    return DriveWriter(out_dir, format, lambda d: backend_cls(d, calib, meta, **options), overwrite=overwrite,
                       background=background)


# --- Reading --------------------------------------------------------------------------------

@dataclass
class SkippedFrame:
    index: int
    path: str | None
    reason: str


class Drive:
    """A recorded drive opened for reading. Subclasses implement ``_read_frame``."""

    format: str = ""

    def __init__(self, path: Path, calib: DriveCalib, meta: DriveMeta | None, num_frames: int) -> None:
        self.path = path
        self.calib = calib
        self.meta = meta
        self._num_frames = num_frames
        self.skipped: list[SkippedFrame] = []

    def __len__(self) -> int:
        return self._num_frames

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def frame(self, index: int) -> DriveFrame:
        """Frame ``index`` (0-based); InputDataError names the file and field if it is corrupt."""
        if not -self._num_frames <= index < self._num_frames:
            raise IndexError(f"frame {index} out of range: {self.path} has {self._num_frames} frames")
        return self._read_frame(index % self._num_frames)

    def frames(self, on_error: str = "raise", start: int = 0, stop: int | None = None) -> Iterator[DriveFrame]:
        """Frames ``start..stop-1`` one at a time. ``on_error="skip"`` logs a corrupt frame, records
        it in ``self.skipped`` and goes on; ``"raise"`` raises its InputDataError."""
        if on_error not in ON_ERROR:
            raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}", field="on_error")
        stop = self._num_frames if stop is None else min(stop, self._num_frames)
        for index in range(start, stop):
            try:
                frame = self._read_frame(index)
            except InputDataError as exc:
                if on_error == "raise":
                    raise
                self.skipped.append(SkippedFrame(index, exc.path, exc.message if exc.field is None
                                                 else f"{exc.field}: {exc.message}"))
                log.warning("skipping frame %d of %s: %s", index, self.path, exc)
                continue
            yield frame

    def _read_frame(self, index: int) -> DriveFrame:
        raise NotImplementedError

    def close(self) -> None:
        """Release open files (subclasses that hold any override this)."""

    def __enter__(self) -> Drive:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, frames={len(self)}, format={self.format!r})"


def detect_format(path: str | Path) -> str:
    """"rosbag2" or "kitti-raw" for an existing drive; InputDataError otherwise."""
    path = Path(path)
    if not path.exists():
        raise InputDataError("drive not found", path=path)
    if PARTIAL_MARK in path.name or any(PARTIAL_MARK in p.name for p in path.parents[:1]):
        raise InputDataError("this is an unfinished (interrupted) drive write; it is not a drive", path=path)
    if path.is_file():
        if path.suffix == ".mcap":
            return "rosbag2"
        raise InputDataError("not a drive: expected a rosbag2 folder, a .mcap file or a KITTI raw drive "
                             "folder", path=path)
    if (path / "metadata.yaml").is_file() or any(path.glob("*.mcap")):
        return "rosbag2"
    if (path / "image_02").is_dir() or (path / "velodyne_points").is_dir():
        return "kitti-raw"
    raise InputDataError("not a drive: no metadata.yaml or .mcap (rosbag2) and no image_02/ or "
                         "velodyne_points/ (KITTI raw)", path=path)


def open_drive(path: str | Path) -> Drive:
    """Open a recorded drive: a rosbag2 folder (MCAP or SQLite3 storage), a bare .mcap file,
    or a KITTI raw drive folder (ours, or a real KITTI ``*_sync`` folder)."""
    path = Path(path)
    fmt = detect_format(path)
    try:
        if fmt == "rosbag2":
            from pipeline.drive.rosbag import RosbagDrive
            return RosbagDrive(path)
        from pipeline.drive.kitti_raw import KittiRawDrive
        return KittiRawDrive(path)
    except SegfuseError:
        raise
    except OSError as exc:
        raise InputDataError(f"cannot read drive: {exc}", path=getattr(exc, "filename", None) or path) from exc
