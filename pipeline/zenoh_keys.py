"""ROS 2 over Zenoh naming, as rmw_zenoh_cpp lays it out (ros2/rmw_zenoh, docs/design.md).

- Key expression of a topic ("Topic and Service name mapping to Zenoh key expressions"):
  ``<domain_id>/<fully qualified name without the leading '/'>/<DDS type name>/<type hash>``,
  e.g. ``0/chatter/std_msgs::msg::dds_::String_/RIHS01_df668c74...``.
- Attachment of every ``put`` ("Publishers"): 8 bytes sequence number (int64, little-endian),
  8 bytes source timestamp (ns since the UNIX epoch, int64, little-endian), 1 byte GID length
  (16), 16 bytes publisher GID: 33 bytes.
- Type hash: RIHS01 (REP-2011, ``rosidl_generator_type_description``): sha256 over the JSON of
  the type description (the type and every type it references, sorted by name; fields with
  type_id, capacity, string_capacity, nested_type_name; no default values), dumped with
  separators ``(', ', ': ')`` and the keys in that order. Built here from the rosbags typestore's
  field definitions, so our own .msg files get the hash ROS 2 would give them.

Pure functions; hashlib/json/struct only.
"""
from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

from pipeline.errors import InputDataError

ATTACHMENT_SIZE = 33
GID_SIZE = 16

# type_description_interfaces/msg/FieldType.msg
_BASE_IDS = {"int8": 2, "uint8": 3, "int16": 4, "uint16": 5, "int32": 6, "uint32": 7, "int64": 8, "uint64": 9,
             "float32": 10, "float64": 11, "float": 10, "double": 11, "char": 13, "wchar": 14, "bool": 15,
             "byte": 16, "octet": 16, "string": 17, "wstring": 18}
_NESTED = 1
_ARRAY, _BOUNDED_SEQ, _SEQ = 48, 96, 144
_BOUNDED_STRING, _BOUNDED_WSTRING = 21, 22


def dds_type_name(msgtype: str) -> str:
    """``sensor_msgs/msg/PointCloud2`` -> ``sensor_msgs::msg::dds_::PointCloud2_``."""
    parts = msgtype.split("/")
    if len(parts) != 3 or not all(parts):
        raise InputDataError(f"a ROS 2 type name pkg/msg/Name, got {msgtype!r}", field="msgtype")
    return f"{parts[0]}::{parts[1]}::dds_::{parts[2]}_"


def topic_key(domain_id: int, topic: str, msgtype: str, type_hash: str) -> str:
    """The rmw_zenoh key expression of ``topic`` (a fully qualified name, '/' first)."""
    if not topic.startswith("/") or topic.endswith("/") or "//" in topic:
        raise InputDataError(f"a fully qualified topic name like /segfuse/points, got {topic!r}", field="topic")
    return f"{int(domain_id)}/{topic[1:]}/{dds_type_name(msgtype)}/{type_hash}"


def parse_topic_key(key: str) -> tuple[int, str, str, str]:
    """(domain_id, topic, msgtype, type_hash) from a key expression made by :func:`topic_key`."""
    parts = str(key).split("/")
    if len(parts) < 4 or not parts[0].isdigit() or "::dds_::" not in parts[-2]:
        raise InputDataError(f"not an rmw_zenoh topic key expression: {key!r}", field="key_expr")
    pkg, kind, _, name = parts[-2].split("::")
    return int(parts[0]), "/" + "/".join(parts[1:-2]), f"{pkg}/{kind}/{name.rstrip('_')}", parts[-1]


def encode_attachment(sequence_number: int, source_timestamp_ns: int, gid: bytes) -> bytes:
    """The 33-byte rmw_zenoh attachment."""
    if len(gid) != GID_SIZE:
        raise InputDataError(f"a GID is {GID_SIZE} bytes, got {len(gid)}", field="gid")
    return struct.pack("<qqB", int(sequence_number), int(source_timestamp_ns), GID_SIZE) + bytes(gid)


def decode_attachment(data: bytes | None) -> tuple[int, int, bytes]:
    """(sequence_number, source_timestamp_ns, gid) from an rmw_zenoh attachment."""
    if data is None or len(data) != ATTACHMENT_SIZE or data[16] != GID_SIZE:
        raise InputDataError(f"not an rmw_zenoh attachment ({0 if data is None else len(data)} bytes)",
                             field="attachment")
    seq, stamp, _ = struct.unpack_from("<qqB", data)
    return seq, stamp, bytes(data[17:33])


# --- RIHS01 -------------------------------------------------------------------------------

def _field_type(desc: tuple) -> dict[str, Any]:
    from rosbags.typesys.base import Nodetype

    kind, detail = desc
    suffix, capacity = 0, 0
    if kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):
        (kind, detail), bound = detail
        if desc[0] == Nodetype.ARRAY:
            suffix, capacity = _ARRAY, int(bound)
        else:
            suffix = _BOUNDED_SEQ if bound else _SEQ
            capacity = int(bound)
    if kind == Nodetype.NAME:
        return {"type_id": _NESTED + suffix, "capacity": capacity, "string_capacity": 0,
                "nested_type_name": str(detail)}
    name, strlen = detail
    tid = _BASE_IDS[name]
    if name in ("string", "wstring") and strlen:
        tid = _BOUNDED_STRING if name == "string" else _BOUNDED_WSTRING
    return {"type_id": tid + suffix, "capacity": capacity, "string_capacity": int(strlen or 0),
            "nested_type_name": ""}


def _individual(typestore: Any, name: str) -> dict[str, Any]:
    try:
        _, fields = typestore.fielddefs[name]
    except KeyError:
        raise InputDataError(f"type {name} is not in the type store", field="msgtype") from None
    return {"type_name": name, "fields": [{"name": fname, "type": _field_type(desc)} for fname, desc in fields]}


def type_description(typestore: Any, msgtype: str) -> dict[str, Any]:
    """The hashable type description of ``msgtype`` (REP-2011 layout, without default values)."""
    top = _individual(typestore, msgtype)
    seen: dict[str, dict] = {}
    queue = [f["type"]["nested_type_name"] for f in top["fields"] if f["type"]["nested_type_name"]]
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen[name] = _individual(typestore, name)
        queue += [f["type"]["nested_type_name"] for f in seen[name]["fields"] if f["type"]["nested_type_name"]]
    return {"type_description": top, "referenced_type_descriptions": [seen[k] for k in sorted(seen)]}


def type_hash(typestore: Any, msgtype: str) -> str:
    """``RIHS01_<sha256 hex>`` of ``msgtype`` as rosidl computes it."""
    text = json.dumps(type_description(typestore, msgtype), ensure_ascii=True, allow_nan=False, indent=None,
                      separators=(", ", ": "), sort_keys=False)
    return "RIHS01_" + hashlib.sha256(text.encode("utf-8")).hexdigest()
