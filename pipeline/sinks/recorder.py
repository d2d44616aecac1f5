"""Recorder: the run's results as a rosbag2 folder with MCAP storage that Foxglove opens.

Topics: the output schema (pipeline.sinks.schema, the table in docs/publishing.md), built by
pipeline.sinks.messages.RosMessages like every other sink's. Log time = header stamp = the
input's stamp; no wall-clock value anywhere, so a replay of the same drive records the same bytes.

The folder is built as ``OUT/.NAME.partial-<pid>/NAME`` and moved to ``OUT/NAME`` by ``close()``,
so a recording that exists is complete; ``close()`` after SIGINT/SIGTERM finishes it too. Each
frame is one MCAP chunk (with its CRC-32), flushed and fsynced before the next frame starts
(pipeline.mcap_io.DurableChunks): a SIGKILL or a power loss leaves a partial that ``segfuse
recover OUT`` turns into a valid recording of every whole frame, and a write that fails (a full
disk) ends the file at the last whole frame with its summary, footer and metadata.yaml.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import setting
from pipeline.errors import ConfigError
from pipeline.sinks.messages import (  # noqa: F401  (re-exported: the recorder's names)
    CLOUD_DTYPE, CLOUD_FIELDS, LANE_STEP_M, TOPIC_LANE_LINES, TOPIC_LANES, TOPIC_MARKERS, TOPIC_OBJECTS, TOPIC_POINTS,
    TOPIC_RUN_INFO, TOPIC_STATUS, RosMessages, frame_view, instance_topic, sample_lane, semantic_topic)
from pipeline.sinks.schema import BASE_FRAME, WORLD_FRAME  # noqa: F401

log = logging.getLogger(__name__)

RECORDING_FORMAT = 2           # 2: the output schema's topics (FrameStatus on /segfuse/status, /segfuse/lane_lines, /clock)
COMPRESSIONS = ("lz4", "zstd", "none")


@dataclass
class RecorderConfig:
    """``sinks.recorder`` of a run config."""

    enabled: bool = setting(True, doc="record the run's results (OUT/recording, rosbag2 + MCAP)")
    compression: str = setting("lz4", choices=COMPRESSIONS, doc="MCAP chunk compression")
    camera_image: bool = setting(False, doc="also record the input camera image (a bigger file)")

class Recorder(RosMessages):
    """``write(result)`` per frame (a pipeline.types.FrameResult, in order, from one thread), ``close()``
    once; ``abort()`` drops it."""

    def __init__(self, out_dir: str | Path, rig: Any, taxonomy: Any, *, camera_id: str, lidar_id: str | None,
                 run_info: dict[str, Any], compression: str = "lz4", camera_image: bool = False,
                 name: str = "recording", has_poses: bool = False, replay: bool = True, fsync: bool = True) -> None:
        from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

        from pipeline.mcap_io import DurableChunks, configure_chunks

        self.final = Path(out_dir) / name
        self.staging = Path(out_dir) / f".{name}.partial-{os.getpid()}"
        if self.staging.exists():
            shutil.rmtree(self.staging)
        self.staging.mkdir(parents=True)
        self.path = self.staging / name
        self.rig = rig
        self._init_messages(rig, taxonomy, camera_id=camera_id, lidar_id=lidar_id, has_poses=has_poses, replay=replay,
                            camera_image=camera_image,
                            run_info=json.dumps({"segfuse_recording_format": RECORDING_FORMAT, **run_info},
                                                sort_keys=True))
        self._writer = Writer(self.path, version=8, storage_plugin=StoragePlugin.MCAP)
        if compression == "zstd":
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        elif compression not in ("lz4", "none"):
            raise ConfigError(f"unknown compression {compression!r}", field="sinks.recorder.compression")
        self._writer.open()
        from pipeline.drive.rosbag import LZ4_LEVEL

        configure_chunks(self._writer, compression, per_frame=True, lz4_level=LZ4_LEVEL)   # one CRC'd chunk per frame
        self._durable = DurableChunks(self._writer, fsync=fsync)
        self._conns: dict[str, Any] = {}
        self._started = False
        self._state = "open"
        self.failed: BaseException | None = None          # the write error that stopped recording
        self.frames = 0
        self.clouds = 0

    # -- message helpers -------------------------------------------------------------------
    def _put(self, topic: str, msgtype: str, stamp_ns: int, msg: Any, latched: bool = False) -> None:
        conn = self._conns.get(topic)
        if conn is None:
            qos = ()
            if latched:
                from pipeline.drive.rosbag import latched_qos

                qos = latched_qos()
            conn = self._writer.add_connection(topic, msgtype, typestore=self._ts, offered_qos_profiles=qos)
            self._conns[topic] = conn
        self._writer.write(conn, int(stamp_ns), msg if isinstance(msg, bytes) else self._ts.serialize_cdr(msg, msgtype))

    # -- frames ----------------------------------------------------------------------------
    def _start(self, stamp_ns: int) -> None:
        for topic, msgtype, stamp, msg in self.start_messages(stamp_ns):
            self._put(topic, msgtype, stamp, msg, latched=True)
        self._started = True

    def write(self, work: Any) -> None:
        """Record one frame's results (the output schema's topics; pipeline.sinks.messages): its
        messages go into one chunk, closed and put on disk (flush + fsync) before ``frames`` counts
        it. A write that fails (a full disk) stops the recorder; ``close()`` then ends the file at
        the last whole frame."""
        if self._state != "open":
            return
        clouds = 0
        try:
            v = frame_view(work)
            if not self._started:
                self._start(self.first_stamp(v))
            for topic, msgtype, stamp, msg in self.frame_cdr(v, live=False):
                self._put(topic, msgtype, stamp, msg)
                clouds += topic == TOPIC_POINTS
            self._durable.checkpoint()
        except BaseException as exc:
            self._state = "failed"
            self.failed = exc
            raise
        self.frames += 1
        self.clouds += clouds

    # -- closing ---------------------------------------------------------------------------
    def close(self) -> Path:
        """Finish the MCAP (summary, footer, metadata.yaml) and move the recording into place. After
        a failed write, the file ends at the last frame that was written whole (``frames``)."""
        if self._state not in ("open", "failed"):
            return self.final
        failed = self._state == "failed"
        self._state = "closing"
        try:
            if failed:
                self._durable.close_at_checkpoint()
            else:
                if not self._started:
                    self._start(0)
                self._durable.close()
            if self.final.exists():
                raise FileExistsError(f"{self.final} appeared while recording; the recording stays in {self.path}")
            os.rename(self.path, self.final)
        except BaseException:
            self._state = "aborted"           # the partial stays for segfuse recover
            raise
        shutil.rmtree(self.staging, ignore_errors=True)
        self._state = "closed"
        log.info("recorded %d frames (%d fused clouds) to %s", self.frames, self.clouds, self.final)
        return self.final

    def abort(self) -> None:
        """Drop the recording (a run refused or failed before its first frame)."""
        if self._state not in ("open", "failed"):
            return
        self._state = "aborted"
        try:
            self._writer.close()
        except Exception as exc:       # the folder is removed next anyway
            log.debug("recorder abort: %s", exc)
        shutil.rmtree(self.staging, ignore_errors=True)
