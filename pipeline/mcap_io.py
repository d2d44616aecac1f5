"""MCAP chunks as segfuse writes and reads them (rosbags' rosbag2 MCAP storage underneath).

Writing (``configure_chunks``): lz4 (or zstd / none) chunk compression and a CRC-32 of each
chunk's uncompressed records in its ``uncompressed_crc`` field (rosbags writes 0 there, which
readers take as "no CRC"); rosbags' reader and mcap's reader (``validate_crcs=True``) check it.

Durable writing (``DurableChunks``, the run recorder): one chunk per frame, closed, flushed and
fsynced by ``checkpoint()`` after the frame's last message, so a SIGKILL or a power loss leaves a
file whose complete chunks are exactly the completed frames. ``close_at_checkpoint()`` ends a file
whose last write failed (a full disk): the bytes after the last checkpoint are cut off and the
summary, footer and metadata.yaml are written for what came before.

Recovery (``recover_bag``): an MCAP without summary or footer (a killed run) -> a valid rosbag2
folder with every complete, CRC-valid chunk's messages (what ``ros2 bag reindex`` does for
SQLite bags), through mcap's stream reader.

Reading (``skip_corrupt_chunks``): a rosbags reader whose chunk fails to decompress or fails its
CRC skips that chunk and reports it (topics, time range) instead of ending the whole read.
"""
from __future__ import annotations

import logging
import os
import shutil
from binascii import crc32
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from types import MethodType
from typing import Any, Callable

log = logging.getLogger(__name__)



# --- Writing --------------------------------------------------------------------------------

def configure_chunks(writer: Any, compression: str, *, per_frame: bool = False, lz4_level: int = -1) -> None:
    """Chunk compression and CRCs on an open rosbags rosbag2 MCAP ``writer``. ``per_frame``:
    chunks close only at ``DurableChunks.checkpoint`` (and at close), never by size. ``lz4_level``:
    callers pass pipeline.drive.rosbag.LZ4_LEVEL (where the level was measured)."""
    storage = writer.storage
    if compression == "lz4":
        import lz4.frame

        if hasattr(storage, "compression") and hasattr(storage, "compressor"):
            storage.compression = "lz4"
            storage.compressor = lambda data: lz4.frame.compress(data, compression_level=lz4_level, store_size=False)
        else:
            log.warning("this rosbags version does not allow lz4 chunks; writing uncompressed chunks")
    try:
        from rosbags.rosbag2 import storage_mcap as sm

        _ = (sm.PendingChunk, sm.write_uint64, sm.write_uint32, sm.write_uint16, sm.write_string, sm.write_record)
        _ = (storage.chunk, storage.chunks, storage.bio)
    except (ImportError, AttributeError):
        log.warning("this rosbags version's MCAP writer cannot be given chunk CRCs; chunks carry none")
        return
    storage.segfuse_per_frame = per_frame
    storage.segfuse_closing = False
    storage.close_chunk = MethodType(_close_chunk, storage)


def _close_chunk(self: Any) -> None:
    """rosbags' McapWriter.close_chunk (0.11) with the chunk's CRC-32 written."""
    from collections import defaultdict

    from rosbags.rosbag2.storage_mcap import (PendingChunk, write_record, write_string, write_uint16,
                                              write_uint32, write_uint64)

    if self.segfuse_per_frame and not self.segfuse_closing:
        return                       # a size-triggered close: per-frame chunks close at checkpoints only
    raw = self.chunk.bio.getvalue()
    rec = BytesIO()
    write_uint64(rec, self.chunk.message_start_time)
    write_uint64(rec, self.chunk.message_end_time)
    write_uint64(rec, len(raw))
    write_uint32(rec, crc32(raw))
    compressed = self.compressor(raw)
    write_string(rec, self.compression)
    write_uint64(rec, len(compressed))
    rec.write(compressed)

    chunk_start = self.bio.tell()
    write_record(self.bio, 0x06, rec)
    chunk_end = self.bio.tell()

    offsets: list[tuple[int, int]] = []
    for cid, msgs in self.chunk.msgs.items():
        offsets.append((cid, self.bio.tell()))
        rec = BytesIO()
        write_uint16(rec, cid)
        write_uint32(rec, len(msgs) * 16)
        for ts, offset in msgs:
            write_uint64(rec, ts)
            write_uint64(rec, offset)
        write_record(self.bio, 0x07, rec)

    rec = BytesIO()
    write_uint64(rec, self.chunk.message_start_time)
    write_uint64(rec, self.chunk.message_end_time)
    write_uint64(rec, chunk_start)
    write_uint64(rec, chunk_end - chunk_start)
    write_uint32(rec, len(offsets) * 10)
    for cid, offset in offsets:
        write_uint16(rec, cid)
        write_uint64(rec, offset)
    write_uint64(rec, self.bio.tell() - chunk_end)
    write_string(rec, self.compression)
    write_uint64(rec, len(compressed))
    write_uint64(rec, len(raw))
    self.chunks.append(rec)
    self.chunk = PendingChunk(2**63 - 1, 0, BytesIO(), defaultdict(list))


@dataclass
class _Checkpoint:
    offset: int
    chunks: int
    channel_stats: dict[int, int]
    start: int
    end: int
    counts: dict[int, int]


class DurableChunks:
    """One chunk per frame on a rosbags writer set up with ``configure_chunks(per_frame=True)``."""

    def __init__(self, writer: Any, *, fsync: bool = True) -> None:
        self.writer = writer
        self.fsync = fsync
        self.storage = writer.storage
        self.path = Path(self.storage.path)
        self._good: _Checkpoint | None = None
        self.checkpoints = 0

    def _closing(self, fn: Callable[[], Any]) -> Any:
        self.storage.segfuse_closing = True
        try:
            return fn()
        finally:
            if self.writer.storage is not None:
                self.storage.segfuse_closing = False

    def checkpoint(self) -> None:
        """Close the chunk of the frame just written and put it on disk (flush + fsync)."""
        st = self.storage
        if st.chunk.bio.tell():
            self._closing(st.close_chunk)
        st.bio.flush()
        if self.fsync:
            os.fsync(st.bio.fileno())
        self._good = _Checkpoint(st.bio.tell(), len(st.chunks), dict(st.channel_stats), st.message_start_time,
                                 st.message_end_time, dict(self.writer.counts))
        self.checkpoints += 1

    def close(self) -> None:
        self._closing(self.writer.close)

    def close_at_checkpoint(self) -> None:
        """End the file at the last checkpoint (drop a failed or half-written frame) and write its
        summary, footer and metadata.yaml."""
        st, good = self.storage, self._good
        old = st.bio
        try:                                  # its buffer may hold the failed chunk's bytes: never flush it
            old.raw.close()
        except Exception:  # noqa: BLE001 - already broken is fine
            pass
        try:
            old.close()
        except Exception:  # noqa: BLE001
            pass
        offset = good.offset if good is not None else 0
        if good is None:                       # nothing completed: the file restarts after the header
            offset = _header_end(self.path)
        os.truncate(self.path, offset)
        st.bio = self.path.open("r+b")
        st.bio.seek(offset)
        from collections import defaultdict

        from rosbags.rosbag2.storage_mcap import PendingChunk

        st.chunk = PendingChunk(2**63 - 1, 0, BytesIO(), defaultdict(list))
        if good is not None:
            del st.chunks[good.chunks:]
            st.channel_stats = {cid: good.channel_stats.get(cid, 0) for cid in st.channel_stats}
            st.message_start_time, st.message_end_time = good.start, good.end
            self.writer.counts = {cid: good.counts.get(cid, 0) for cid in self.writer.counts}
        else:
            st.chunks.clear()
            st.channel_stats = {cid: 0 for cid in st.channel_stats}
            self.writer.counts = {cid: 0 for cid in self.writer.counts}
        self._closing(self.writer.close)


def _header_end(path: Path) -> int:
    """Offset after the magic and the Header record of an MCAP file."""
    with path.open("rb") as f:
        head = f.read(8 + 9)
        return 8 + 9 + int.from_bytes(head[9:17], "little")


# --- Recovery -------------------------------------------------------------------------------

@dataclass
class Recovered:
    source: Path
    bag: Path
    messages: int = 0
    chunks: int = 0
    lost_chunks: list[str] = field(default_factory=list)
    truncated_bytes: int = 0
    topics: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"source": str(self.source), "bag": str(self.bag), "messages": self.messages, "chunks": self.chunks,
                "lost_chunks": self.lost_chunks, "truncated_bytes": self.truncated_bytes, "topics": self.topics}


def find_mcap(folder: Path) -> Path | None:
    files = sorted(Path(folder).glob("*.mcap"))
    return files[0] if files else None


def recover_bag(mcap_path: Path, dest: Path, *, compression: str = "lz4") -> Recovered:
    """Every complete chunk of ``mcap_path`` (an MCAP whose writer was killed) -> a new rosbag2
    folder ``dest`` (must not exist) with MCAP storage, chunk CRCs, summary, footer and
    metadata.yaml. A chunk that fails its CRC or cannot be decompressed is skipped and listed."""
    from mcap.exceptions import McapError
    from mcap.records import Channel, Chunk, Message, Schema
    from mcap.stream_reader import StreamReader, breakup_chunk
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.rosbag2.metadata import parse_qos

    from pipeline.msgs import make_typestore

    ts = make_typestore()
    rec = Recovered(Path(mcap_path), Path(dest))
    size = Path(mcap_path).stat().st_size
    schemas: dict[int, Schema] = {}
    channels: dict[int, Channel] = {}
    conns: dict[int, Any] = {}
    writer = Writer(Path(dest), version=8, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    configure_chunks(writer, compression)
    consumed = 0

    def on_records(records: list[Any]) -> None:
        for r in records:
            if isinstance(r, Schema):
                schemas[r.id] = r
            elif isinstance(r, Channel):
                channels[r.id] = r
            elif isinstance(r, Message):
                ch = channels.get(r.channel_id)
                if ch is None:
                    continue
                conn = conns.get(r.channel_id)
                if conn is None:
                    schema = schemas.get(ch.schema_id)
                    msgtype = schema.name if schema is not None else "std_msgs/msg/String"
                    qos_text = ch.metadata.get("offered_qos_profiles", "")
                    try:
                        qos = parse_qos(qos_text) if qos_text else []
                    except Exception:  # noqa: BLE001 - unparseable QoS: none kept
                        qos = []
                    if msgtype in ts.types:
                        conn = writer.add_connection(ch.topic, msgtype, typestore=ts, offered_qos_profiles=qos)
                    else:
                        conn = writer.add_connection(ch.topic, msgtype, msgdef=schema.data.decode(),
                                                     rihs01="RIHS01_" + "0" * 64, offered_qos_profiles=qos)
                    conns[r.channel_id] = conn
                writer.write(conn, r.log_time, r.data)
                rec.messages += 1
                rec.topics[ch.topic] = rec.topics.get(ch.topic, 0) + 1

    try:
        with Path(mcap_path).open("rb") as f:
            reader = StreamReader(f, emit_chunks=True, record_size_limit=size)
            try:
                for r in reader.records:
                    if isinstance(r, Chunk):
                        try:
                            inner = breakup_chunk(r, validate_crc=True)
                        except Exception as exc:  # noqa: BLE001 - CRC or decompression: skip this chunk
                            rec.lost_chunks.append(f"chunk at log time {r.message_start_time}-{r.message_end_time} "
                                                   f"ns: {exc}")
                            continue
                        on_records(inner)
                        rec.chunks += 1
                    elif isinstance(r, (Schema, Channel, Message)):
                        on_records([r])
                    consumed = f.tell()
            except (McapError, EOFError, ValueError, OSError) as exc:
                log.info("%s ends mid-record after %d bytes (%s)", mcap_path, consumed, type(exc).__name__)
        rec.truncated_bytes = max(0, size - consumed)
        writer.close()
    except BaseException:
        try:
            writer.close()
        except Exception:  # noqa: BLE001
            pass
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return rec


# --- Reading --------------------------------------------------------------------------------

_SKIP: dict[int, Callable[[Any, BaseException], None]] = {}


def skip_corrupt_chunks(reader: Any, on_lost: Callable[[str, int, int, BaseException], None]) -> None:
    """Make an open rosbags ``AnyReader`` (or rosbag2 ``Reader``) skip MCAP chunks that fail
    to decompress or fail their CRC: ``on_lost(topics, start_ns, end_ns, error)`` is called for
    each and the read goes on with the next chunk (through the summary's chunk index)."""
    from rosbags.rosbag2 import storage_mcap as sm

    if not getattr(sm, "_segfuse_skipping", False):
        original = sm.msgsrc

        def msgsrc(chunk: Any, channel_map: Any, start: int, stop: int, bio: Any) -> Any:
            gen = original(chunk, channel_map, start, stop, bio)
            handler = _SKIP.get(id(bio))
            if handler is None:
                yield from gen
                return
            try:
                yield from gen
            except Exception as exc:  # noqa: BLE001 - rosbags raises plain RuntimeError / ReaderError
                handler(chunk, exc)

        sm.msgsrc = msgsrc
        sm._segfuse_skipping = True

    for st in _mcap_storages(reader):
        names = {c.id: c.topic for c in st.connections}

        def handler(chunk: Any, exc: BaseException, names: dict = names) -> None:
            topics = ", ".join(sorted({names.get(cid, str(cid)) for cid, n in chunk.channel_count.items() if n}))
            on_lost(topics, int(chunk.message_start_time), int(chunk.message_end_time), exc)

        _SKIP[id(st.bio)] = handler


def _mcap_storages(obj: Any, depth: int = 0) -> list[Any]:
    """The open MCAP storages under a rosbags AnyReader / Reader / DirectoryReader."""
    if depth > 4 or obj is None:
        return []
    if getattr(obj, "bio", None) is not None and hasattr(obj, "chunks"):
        return [obj]
    found = []
    for name in ("readers", "storages"):
        for child in getattr(obj, name, None) or []:
            found += _mcap_storages(child, depth + 1)
    if hasattr(obj, "storage"):
        found += _mcap_storages(obj.storage, depth + 1)
    return found


def forget_reader(reader: Any) -> None:
    """Drop ``skip_corrupt_chunks``' handlers of a reader (call before closing it)."""
    for st in _mcap_storages(reader):
        _SKIP.pop(id(st.bio), None)
