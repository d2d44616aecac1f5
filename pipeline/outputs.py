"""A run's output folder: claimed at start, finalised after a fault, recovered after a kill.

- ``claim_out_dir``: a folder that holds anything is refused (one line naming it, and what a
  killed run left there) unless ``overwrite``; then only the entries segfuse writes are removed,
  each named in a warning. An unwritable folder is refused at start too. Used by ``run``,
  ``profile``, ``fuse``; ``sim`` and ``listen --record`` have their own refusals; ``demo``
  replaces its own outputs by design (docs/runtime.md).
- ``reserve_space`` / ``release_space``: a few MiB held in ``OUT/.segfuse-reserve`` while the run
  writes, given back when a fault stops it, so that a full disk still leaves room for the
  recording's summary and footer, the overlay and summary.json.
- ``finish_after_fault``: the run's sinks closed after a fault that stopped the run (the recorder
  ends its file at the last whole frame), and the fault described for summary.json.
- ``recover``: ``segfuse recover DIR``: a killed run's partial recording and overlay segments ->
  ``DIR/recording`` and ``DIR/overlay.mp4``, and ``DIR/recovered.json`` saying what was kept.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import threading
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from pipeline.errors import ConfigError, InputDataError

log = logging.getLogger(__name__)

RUN_OUTPUTS = ("recording", "overlay.mp4", "overlay_first.png", "summary.json", "recovered.json", "eval.json",
               "latency.txt")
PARTIAL_GLOBS = (".recording.partial-*", ".overlay.segments", ".overlay.mp4.joining.mp4", ".segfuse-reserve")
RESERVE_NAME = ".segfuse-reserve"
RESERVE_BYTES = 4 << 20
EXIT_FAULT = 1           # a run a fault stopped: what it completed is kept, the exit code says it failed


def unfinished(out: Path) -> list[Path]:
    """Partial recordings a killed run left in ``out``."""
    return sorted(p for p in Path(out).glob(".recording.partial-*") if p.is_dir())


def claim_out_dir(out: str | Path, *, overwrite: bool, outputs: tuple[str, ...] = RUN_OUTPUTS,
                  option: str = "--overwrite", field: str = "--out") -> Path:
    """Make ``out`` the run's output folder: refuse a folder that holds anything unless
    ``overwrite`` (then remove only ``outputs`` and the partials segfuse leaves); refuse one
    that cannot be written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"the output {out} is a file, not a folder", path=str(out), field=field)
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            partial = unfinished(out)
            if not overwrite:
                shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
                msg = (f"the output folder {out} is not empty ({shown}): refusing to overwrite it; pass {option} "
                       f"or choose another folder")
                if partial:
                    msg += (f"; it holds the unfinished recording of a killed run ({partial[0].name}): "
                            f"'segfuse recover {out}' turns it into a valid recording")
                raise ConfigError(msg, path=str(out), field=field)
            removed = remove_outputs(out, outputs)
            if removed:
                log.warning("%s: removed the previous outputs in %s: %s", option, out, ", ".join(removed))
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".segfuse-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to the output folder {out}: {exc.strerror or exc}", path=str(out),
                          field=field) from exc
    return out


def remove_outputs(out: Path, outputs: tuple[str, ...] = RUN_OUTPUTS) -> list[str]:
    removed = []
    paths = [out / n for n in outputs] + [p for g in PARTIAL_GLOBS for p in out.glob(g)]
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(p.name)
    return removed


def reserve_space(out: Path, nbytes: int = RESERVE_BYTES) -> Path | None:
    """Hold ``nbytes`` of real disk space in ``out`` (given back by release_space)."""
    path = Path(out) / RESERVE_NAME
    try:
        with path.open("wb") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, nbytes)
            except (AttributeError, OSError):
                f.write(b"\0" * nbytes)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        log.warning("could not reserve %d MiB in %s for finishing the outputs after a fault: %s",
                    nbytes >> 20, out, exc)
        path.unlink(missing_ok=True)
        return None
    return path


def release_space(out: Path) -> None:
    (Path(out) / RESERVE_NAME).unlink(missing_ok=True)


# --- Before the graph runs -------------------------------------------------------------------

@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (main thread only) while the run is built and warmed up,
    so that a SIGTERM in the first seconds removes the half-made outputs instead of killing the
    process with them (the graph installs its graceful handler afterwards)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum} before the run started")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def abort_run(run: Any) -> None:
    """Drop a built run that never started: its sinks' partial outputs, its engines and inputs."""
    for sink in (run.recorder, run.overlay, run.publisher, getattr(run, "liveview", None)):
        if sink is not None:
            try:
                sink.abort()
            except Exception as exc:  # noqa: BLE001 - the rest is still released
                log.debug("abort %s: %s", type(sink).__name__, exc)
    for step in (run.close_engines, run.opened.close):
        try:
            step()
        except Exception as exc:  # noqa: BLE001
            log.debug("abort: %s", exc)
    release_space(run.out)
    try:
        run.out.rmdir()                         # only when the run left it empty
    except OSError:
        pass


# --- After a fault --------------------------------------------------------------------------

def describe_fault(exc: BaseException, where: str | None = None) -> dict[str, Any]:
    """The fault for summary.json: its kind (disk_full, io_error, error), message and where."""
    kind = "error"
    if isinstance(exc, OSError):
        kind = "disk_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "io_error"
    message = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        message = f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    tb = traceback.extract_tb(exc.__traceback__)
    return {"kind": kind, "type": type(exc).__name__, "message": message, "where": where,
            "at": f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else None}


def finish_after_fault(run: Any, error: BaseException) -> tuple[dict[str, Any], Path | None, Path | None]:
    """Close the run's sinks after ``error`` stopped it, keeping every completed frame; returns
    (fault, recording, overlay). A sink that cannot be closed is logged and named in the fault."""
    release_space(run.out)
    where = None
    if run.recorder is not None and getattr(run.recorder, "failed", None) is error:
        where = "recorder"
    fault = describe_fault(error, where)
    fault["finish_errors"] = []
    recording = video = None
    for name, sink in (("recorder", run.recorder), ("overlay", run.overlay)):
        if sink is None:
            continue
        try:
            path = sink.close()
        except Exception as exc:  # noqa: BLE001 - the other sink and the summary still go out
            log.error("could not finish the %s after the fault: %s", name, exc)
            fault["finish_errors"].append(f"{name}: {exc}")
            continue
        if name == "recorder":
            recording = path
        else:
            video = path
    log.error("the run stopped on a fault (%s: %s); kept %s recorded frames", fault["kind"], fault["message"],
              run.recorder.frames if run.recorder is not None else "no")
    return fault, recording, video


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    """summary.json, written to a temporary name and renamed (a crash never leaves half of it)."""
    tmp = Path(out) / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(Path(out) / "summary.json")


# --- segfuse recover ------------------------------------------------------------------------

def recover(out: str | Path, *, name: str = "recording", overwrite: bool = False) -> dict[str, Any]:
    """Turn what a killed run left in ``out`` into outputs: the newest partial recording ->
    ``out/recording`` (every complete frame, valid rosbag2), overlay segments -> ``out/overlay.mp4``."""
    from pipeline.mcap_io import find_mcap, recover_bag
    from pipeline.sinks.overlay import join_segments

    out = Path(out)
    if not out.is_dir():
        raise InputDataError("no such output folder", path=str(out))
    partials = unfinished(out)
    segs_dir = out / ".overlay.segments"
    if not partials and not segs_dir.is_dir():
        raise InputDataError("nothing to recover: no .recording.partial-* folder and no overlay segments "
                             "(the run finished, or never started)", path=str(out))
    result: dict[str, Any] = {"out": str(out), "recording": None, "overlay": None}
    if partials:
        if len(partials) > 1:
            log.warning("%d partial recordings in %s; recovering the newest, %s", len(partials), out, partials[-1].name)
        partial = max(partials, key=lambda p: p.stat().st_mtime)
        final = out / name
        if final.exists():
            if not overwrite:
                raise ConfigError(f"{final} exists: refusing to replace it (--overwrite)", path=str(final),
                                  field="--overwrite")
            shutil.rmtree(final)
        src = find_mcap(partial / name)
        if src is None:
            raise InputDataError("the partial recording holds no .mcap file", path=str(partial / name))
        staging = out / f".{name}.recovering"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        rec = recover_bag(src, staging / name)
        os.rename(staging / name, final)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(partial)
        result["recording"] = {**rec.as_dict(), "bag": str(final),
                               "frames": rec.topics.get("/segfuse/status", rec.topics.get("/segfuse/frame_status", 0))}
        log.info("recovered %d messages (%d frames) of %s into %s", rec.messages,
                 result["recording"]["frames"], partial.name, final)
    if segs_dir.is_dir():
        segs = sorted(segs_dir.glob("*.mp4"))
        video = out / "overlay.mp4"
        n = join_segments(segs, video, _segment_fps(segs)) if segs else 0
        shutil.rmtree(segs_dir, ignore_errors=True)
        result["overlay"] = {"path": str(video) if n else None, "frames": n, "segments": len(segs)}
    release_space(out)
    write_json(out / "recovered.json", result)
    return result


def _segment_fps(segs: list[Path]) -> float:
    import cv2

    cap = cv2.VideoCapture(str(segs[0]))
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    cap.release()
    return float(fps) if fps > 0 else 10.0


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1))


def summary_fields(run: Any, fault: dict[str, Any] | None) -> dict[str, Any]:
    """What summary.json adds about outputs: the fault that stopped the run (or null), the
    overlay's frames and how many were letterboxed."""
    ov = run.overlay
    g = run.graph.stats
    skipped = sum(len(src.skipped) for src in run.opened.sources)
    if fault is None and g.done == 0 and (skipped or g.failed_total) and g.stopped_by != "signal":
        first = (g.failures[:1] or [f"{s.what} {s.where}: {s.reason}" for src in run.opened.sources
                                    for s in src.skipped][:1])
        fault = {"kind": "no_frames", "type": None, "where": None, "at": None, "finish_errors": [],
                 "message": f"no frame could be processed ({skipped} inputs skipped, {g.failed_total} frames failed"
                            + (f"; first: {first[0]}" if first else "") + ")"}
        log.error("%s", fault["message"])
    return {"fault": fault,
            "overlay_frames": None if ov is None else ov.frames,
            "overlay_segments": None if ov is None else ov.segments_written,
            "overlay_resized": None if ov is None else ov.resized}
