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

- Liveliness tokens (rmw_zenoh_cpp/src/detail/liveliness_utils.cpp, ``Entity::Entity`` and
  ``qos_to_keyexpr``; docs/design.md "Graph Cache"): how rmw_zenoh nodes discover each other.
  ``@ros2_lv/<domain_id>/<session zid>/<node_id>/<entity_id>/<NN|MP|MS|SS|SC>/<mangled enclave>/
  <mangled namespace>/<node name>`` and, for topic entities, ``/<mangled topic>/<DDS type name>/
  <type hash>/<qos>``; mangling is '/' -> '%', so the root namespace and the default enclave are
  ``%``; a node token repeats its node id as entity id. QoS: ``R:D:H,depth:dl_s,dl_ns:ls_s,ls_ns:
  lv,lv_s,lv_ns`` with rmw/types.h enum values, each field left empty when it equals rmw_zenoh's
  default (reliable, volatile, keep last, depth 42, infinite durations, automatic liveliness).

Pure functions; hashlib/json/struct only.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, replace
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


MODES = ("peer", "client", "router")          # Zenoh session modes

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


# --- liveliness tokens (ROS graph discovery) -----------------------------------------------

LIVELINESS_PREFIX = "@ros2_lv"
ENTITY_KINDS = {"NN": "node", "MP": "publisher", "MS": "subscription", "SS": "service server",
                "SC": "service client"}
# rmw/types.h enum values (rmw_qos_*_policy_e), as rmw_zenoh writes them into the QoS chunk
RELIABILITY = {1: "reliable", 2: "best_effort"}
DURABILITY = {1: "transient_local", 2: "volatile"}
HISTORY = {1: "keep_last", 2: "keep_all"}
LIVELINESS = {1: "automatic", 3: "manual_by_topic"}
RELIABLE, BEST_EFFORT = 1, 2
TRANSIENT_LOCAL, VOLATILE = 1, 2
KEEP_LAST, KEEP_ALL = 1, 2
AUTOMATIC = 1
DEFAULT_DEPTH = 42            # rmw_zenoh's default depth (qos.cpp); a depth of 0 becomes it


@dataclass(frozen=True)
class RosQos:
    """The QoS an rmw_zenoh entity announces. Durations are (sec, nsec); None = rmw_zenoh's
    default (infinite). Fields equal to the defaults are written as empty strings."""

    reliability: int = RELIABLE
    durability: int = VOLATILE
    history: int = KEEP_LAST
    depth: int = DEFAULT_DEPTH
    deadline: tuple[int, int] | None = None
    lifespan: tuple[int, int] | None = None
    liveliness: int = AUTOMATIC
    liveliness_lease: tuple[int, int] | None = None

    def describe(self) -> str:
        """``best_effort volatile keep_last 1``-style text for people."""
        hist = HISTORY.get(self.history, str(self.history))
        return " ".join([RELIABILITY.get(self.reliability, str(self.reliability)),
                         DURABILITY.get(self.durability, str(self.durability)),
                         hist + (f" {self.depth}" if self.history == KEEP_LAST else "")])


# the QoS segfuse's publisher announces for each of its modes (pipeline.sinks.publisher): "latest"
# puts with congestion control DROP and keeps nothing; "reliable" puts with BLOCK, which is what
# rmw_zenoh does for a RELIABLE + KEEP_ALL publisher (rmw_publisher_data.cpp)
PUBLISHER_QOS = {"latest": RosQos(reliability=BEST_EFFORT, history=KEEP_LAST, depth=1),
                 "reliable": RosQos(reliability=RELIABLE, history=KEEP_ALL)}
# latched topics (/tf_static, run info): reliable, transient local, keep last 1, whatever the mode
LATCHED_QOS = RosQos(reliability=RELIABLE, durability=TRANSIENT_LOCAL, history=KEEP_LAST, depth=1)


def _opt(value: int, default: int) -> str:
    return "" if int(value) == int(default) else str(int(value))


def _dur(d: tuple[int, int] | None) -> str:
    return "," if d is None else f"{int(d[0])},{int(d[1])}"


def qos_keyexpr(qos: RosQos) -> str:
    """The QoS chunk of a liveliness token: ``R:D:H,depth:dl_s,dl_ns:ls_s,ls_ns:lv,lv_s,lv_ns``."""
    return ":".join([_opt(qos.reliability, RELIABLE), _opt(qos.durability, VOLATILE),
                     f"{_opt(qos.history, KEEP_LAST)},{_opt(qos.depth or DEFAULT_DEPTH, DEFAULT_DEPTH)}",
                     _dur(qos.deadline), _dur(qos.lifespan),
                     f"{_opt(qos.liveliness, AUTOMATIC)},{_dur(qos.liveliness_lease)}"])


def parse_qos_keyexpr(text: str) -> RosQos:
    """Inverse of :func:`qos_keyexpr` (empty fields: rmw_zenoh's defaults)."""
    parts = str(text).split(":")
    try:
        if len(parts) != 6:
            raise ValueError("6 ':'-separated fields")
        hist, dl, ls, lv = (p.split(",") for p in parts[2:])
        if (len(hist), len(dl), len(ls), len(lv)) != (2, 2, 2, 3):
            raise ValueError("history 2, deadline 2, lifespan 2, liveliness 3 ','-separated fields")

        def num(s: str, default: int) -> int:
            return default if s == "" else int(s)

        def dur(sec: str, nsec: str) -> tuple[int, int] | None:
            return None if sec == "" and nsec == "" else (num(sec, 0), num(nsec, 0))

        return RosQos(reliability=num(parts[0], RELIABLE), durability=num(parts[1], VOLATILE),
                      history=num(hist[0], KEEP_LAST), depth=num(hist[1], DEFAULT_DEPTH),
                      deadline=dur(*dl), lifespan=dur(*ls), liveliness=num(lv[0], AUTOMATIC),
                      liveliness_lease=dur(lv[1], lv[2]))
    except ValueError as exc:
        raise InputDataError(f"not an rmw_zenoh QoS chunk {text!r}: {exc}", field="qos") from None


def mangle(name: str) -> str:
    """rmw_zenoh's name mangling: every '/' becomes '%' (a token chunk holds no '/')."""
    return str(name).replace("/", "%")


def demangle(name: str) -> str:
    return str(name).replace("%", "/")


def _check_chunk(value: str, what: str) -> str:
    if not value or any(c in value for c in "/*$?#"):
        raise InputDataError(f"{what} {value!r} cannot be a key expression chunk", field=what)
    return value


def _check_ns(ns: str, what: str) -> str:
    if not ns.startswith("/") or (ns != "/" and (ns.endswith("/") or "//" in ns)):
        raise InputDataError(f"{what} must be '/' or an absolute name like /robot1, got {ns!r}", field=what)
    return ns


def node_token(domain_id: int, zid: str, node_id: int, node_name: str, *, namespace: str = "/",
               enclave: str = "/") -> str:
    """The liveliness key expression of a node (kind NN; its entity id is its node id)."""
    return _token(domain_id, zid, node_id, node_id, "NN", node_name, namespace, enclave)


def publisher_token(domain_id: int, zid: str, node_id: int, entity_id: int, node_name: str, topic: str,
                    msgtype: str, type_hash: str, qos: RosQos, *, namespace: str = "/", enclave: str = "/",
                    kind: str = "MP") -> str:
    """The liveliness key expression of a message publisher (kind MP; MS for a subscription)."""
    if kind not in ("MP", "MS"):
        raise InputDataError(f"a topic entity is MP or MS, got {kind!r}", field="kind")
    if not topic.startswith("/") or topic.endswith("/") or "//" in topic:
        raise InputDataError(f"a fully qualified topic name like /segfuse/points, got {topic!r}", field="topic")
    return "/".join([_token(domain_id, zid, node_id, entity_id, kind, node_name, namespace, enclave),
                     mangle(topic), dds_type_name(msgtype), _check_chunk(type_hash, "type_hash"), qos_keyexpr(qos)])


def _token(domain_id: int, zid: str, node_id: int, entity_id: int, kind: str, node_name: str, namespace: str,
           enclave: str) -> str:
    if int(domain_id) < 0 or int(node_id) < 0 or int(entity_id) < 0:
        raise InputDataError("domain, node and entity ids are non-negative", field="id")
    return "/".join([LIVELINESS_PREFIX, str(int(domain_id)), _check_chunk(str(zid), "zid"), str(int(node_id)),
                     str(int(entity_id)), kind, mangle(_check_ns(enclave, "enclave")),
                     mangle(_check_ns(namespace, "namespace")), _check_chunk(node_name, "node_name")])


@dataclass(frozen=True)
class GraphEntity:
    """One rmw_zenoh liveliness token, split (names demangled, '/' first)."""

    domain_id: int
    zid: str
    node_id: int
    entity_id: int
    kind: str                   # NN, MP, MS, SS, SC
    enclave: str
    namespace: str
    node_name: str
    topic: str | None = None    # the rest: topic entities only
    type_name: str | None = None    # DDS name, e.g. sensor_msgs::msg::dds_::PointCloud2_
    type_hash: str | None = None
    qos: RosQos | None = None

    @property
    def node(self) -> str:
        """The node's fully qualified name, e.g. ``/segfuse``."""
        return self.namespace.rstrip("/") + "/" + self.node_name

    @property
    def msgtype(self) -> str | None:
        """The ROS type name (``sensor_msgs/msg/PointCloud2``), from the DDS name."""
        if self.type_name is None:
            return None
        parts = self.type_name.split("::")
        if len(parts) == 4 and parts[2] == "dds_" and parts[3].endswith("_"):
            return f"{parts[0]}/{parts[1]}/{parts[3][:-1]}"
        return self.type_name


def parse_liveliness_token(key: str) -> GraphEntity:
    """Split an ``@ros2_lv/...`` key expression back into its fields (raises InputDataError)."""
    parts = str(key).split("/")
    bad = InputDataError(f"not an rmw_zenoh liveliness token: {key!r}", field="key_expr")
    if len(parts) < 9 or parts[0] != LIVELINESS_PREFIX or parts[5] not in ENTITY_KINDS or not all(parts):
        raise bad
    if not (parts[1].isdigit() and parts[3].isdigit() and parts[4].isdigit()):
        raise bad
    kind = parts[5]
    if len(parts) != (9 if kind == "NN" else 13):
        raise bad
    ent = GraphEntity(int(parts[1]), parts[2], int(parts[3]), int(parts[4]), kind, demangle(parts[6]),
                      demangle(parts[7]), demangle(parts[8]))
    if kind == "NN":
        return ent
    return replace(ent, topic=demangle(parts[9]), type_name=demangle(parts[10]), type_hash=demangle(parts[11]),
                   qos=parse_qos_keyexpr(parts[12]))


def liveliness_selector(domain_id: int | None = None) -> str:
    """What to subscribe to / query for every token (of one domain). ``@ros2_lv`` is a hermetic
    chunk: a plain ``**`` never matches it."""
    return f"{LIVELINESS_PREFIX}/**" if domain_id is None else f"{LIVELINESS_PREFIX}/{int(domain_id)}/**"


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


def gid_of(keyexpr: str) -> bytes:
    """rmw_zenoh's 16-byte GID of an entity: XXH3-128 of its liveliness key expression (the
    ``xxhash`` library), the low 64 bits then the high 64 bits, little-endian."""
    import xxhash

    h = xxhash.xxh3_128_intdigest(keyexpr.encode("utf-8"))
    return (h & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little") + (h >> 64).to_bytes(8, "little")


LOOPBACK_LISTEN = "tcp/127.0.0.1:0"     # where a session listens when nobody named an endpoint


def listen_endpoints(conf: Any, mode: str) -> list[str]:
    """The endpoints a zenoh.Config listens on in ``mode`` (for the start-up log line)."""
    try:
        value = json.loads(conf.get_json("listen/endpoints"))
    except Exception:                   # an odd config: say so rather than guess
        return ["?"]
    if isinstance(value, dict):
        value = value.get(mode, [])
    return [str(v) for v in value]


def zenoh_config(*, mode: str = "peer", connect: list[str] | None = None, listen: list[str] | None = None,
                 config_file: str | None = None, shared_memory: bool = False, multicast_scouting: bool = False,
                 field_prefix: str = "sinks.publisher.") -> Any:
    """A zenoh.Config: the file (if any), then mode/endpoints/scouting/shared memory on top."""
    import json

    import zenoh

    from pipeline.errors import ConfigError

    if config_file:
        try:
            conf = zenoh.Config.from_file(config_file)
        except Exception as exc:       # zenoh raises its own ZError
            raise ConfigError(f"cannot read Zenoh config: {exc}", path=config_file,
                              field=field_prefix + "config_file") from exc
    else:
        conf = zenoh.Config()
    try:
        conf.insert_json5("mode", json.dumps(mode))
        if connect:
            conf.insert_json5("connect/endpoints", json.dumps(list(connect)))
        if listen:
            conf.insert_json5("listen/endpoints", json.dumps(list(listen)))
        elif conf.get_json("listen/endpoints") == zenoh.Config().get_json("listen/endpoints"):
            # nothing named: loopback only (Zenoh's default listens on every interface, tcp/[::]:0)
            conf.insert_json5("listen/endpoints", json.dumps(
                {"router": ["tcp/127.0.0.1:7447"], "peer": [LOOPBACK_LISTEN], "client": []}))
        conf.insert_json5("scouting/multicast/enabled", json.dumps(bool(multicast_scouting)))
        # advanced publishers (latched topics' cache, as rmw_zenoh's transient local) need timestamps
        conf.insert_json5("timestamping/enabled", json.dumps({"router": True, "peer": True, "client": True}))
        # explicit both ways: zenoh 1.x has shared memory on by default (and copies large
        # payloads into it by itself), so "off" has to be said to mean off
        conf.insert_json5("transport/shared_memory/enabled", json.dumps(bool(shared_memory)))
    except Exception as exc:
        raise ConfigError(f"invalid Zenoh setting: {exc}", field=field_prefix.rstrip(".")) from exc
    return conf
