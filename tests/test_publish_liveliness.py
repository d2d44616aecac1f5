"""rmw_zenoh liveliness tokens (ROS graph discovery): the key layout, and the publisher sink
declaring its node and publishers on loopback and leaving the graph when it closes.

Layout verified against ros2/rmw_zenoh (rolling):
- rmw_zenoh_cpp/src/detail/liveliness_utils.cpp @ 3411fdec149fe0c932f24d4d79ef908eb81d7482
  (``KeyexprIndex``: admin space, domain id, zid, node id, entity id, entity kind, enclave,
  namespace, node name, topic, type, type hash, QoS; ``mangle_name`` '/' -> '%';
  ``qos_to_keyexpr``: fields equal to rmw_zenoh's default written empty),
- rmw_zenoh_cpp/src/detail/liveliness_utils.hpp @ 212533e39522a563164b59e030e0ed0eeb9d22f5
  (QoS chunk ``R:D:H,depth:dl_s,dl_ns:ls_s,ls_ns:lv,lv_s,lv_ns``, rmw/types.h enum values),
- rmw_zenoh_cpp/src/detail/qos.cpp @ 7efeee2b9009b816a4bd4a3148af3cca40f753d5 (defaults:
  reliable, volatile, keep last, depth 42, infinite durations, automatic liveliness),
- rmw_zenoh_cpp/src/detail/rmw_node_data.cpp @ 3411fdec149fe0c932f24d4d79ef908eb81d7482 (a node's
  entity id is its node id),
- docs/design.md @ 99a6a2bd10b949052f4f12c5854825dc005e95a5, "Graph Cache" (the examples below).
"""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from pipeline.errors import InputDataError

STRING_HASH = "RIHS01_df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18"
ADD_TWO_INTS_HASH = "RIHS01_e118de6bf5eeb66a2491b5bda11202e7b68f198d6f67922cf30364858239c81a"
# docs/design.md, "Graph Cache", examples with demo_nodes_cpp (ROS_DOMAIN_ID=2)
DESIGN_NODE = "@ros2_lv/2/aac3178e146ba6f1fc6e6a4085e77f21/0/0/NN/%/%/listener"
DESIGN_SUB = ("@ros2_lv/2/aac3178e146ba6f1fc6e6a4085e77f21/0/10/MS/%/%/listener/%chatter/"
              "std_msgs::msg::dds_::String_/" + STRING_HASH + "/::,10:,:,:,,")
DESIGN_PUB = ("@ros2_lv/2/8b20917502ee955ac4476e0266340d5c/0/10/MP/%/%/talker/%chatter/"
              "std_msgs::msg::dds_::String_/" + STRING_HASH + "/::,7:,:,:,,")
DESIGN_SRV = ("@ros2_lv/2/f9980ee0495eaafb3e38f0d19e2eae12/0/10/SS/%/%/add_two_ints_server/%add_two_ints/"
              "example_interfaces::srv::dds_::AddTwoInts_/" + ADD_TWO_INTS_HASH + "/::,10:,:,:,,")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- key layout ------------------------------------------------------------------------------

def test_tokens_are_built_exactly_as_the_rmw_zenoh_design_examples():
    from pipeline.zenoh_keys import RosQos, node_token, publisher_token

    assert node_token(2, "aac3178e146ba6f1fc6e6a4085e77f21", 0, "listener") == DESIGN_NODE
    assert publisher_token(2, "8b20917502ee955ac4476e0266340d5c", 0, 10, "talker", "/chatter", "std_msgs/msg/String",
                           STRING_HASH, RosQos(depth=7)) == DESIGN_PUB
    assert publisher_token(2, "aac3178e146ba6f1fc6e6a4085e77f21", 0, 10, "listener", "/chatter",
                           "std_msgs/msg/String", STRING_HASH, RosQos(depth=10), kind="MS") == DESIGN_SUB
    # a namespace and a topic under it: every '/' mangled to '%'
    assert publisher_token(0, "ab12", 3, 4, "talker", "/robot1/chatter", "std_msgs/msg/String", STRING_HASH, RosQos(),
                           namespace="/robot1", enclave="/secure") == \
        ("@ros2_lv/0/ab12/3/4/MP/%secure/%robot1/talker/%robot1%chatter/std_msgs::msg::dds_::String_/"
         + STRING_HASH + "/::,:,:,:,,")


def test_qos_chunk_writes_only_what_differs_from_the_rmw_zenoh_defaults():
    from pipeline.zenoh_keys import (BEST_EFFORT, KEEP_ALL, PUBLISHER_QOS, TRANSIENT_LOCAL, RosQos,
                                     parse_qos_keyexpr, qos_keyexpr)

    assert qos_keyexpr(RosQos()) == "::,:,:,:,,"                        # all default (depth 42)
    assert qos_keyexpr(RosQos(depth=0)) == "::,:,:,:,,"                 # depth 0: the rmw's default
    # liveliness_utils.hpp: best effort (2), transient local (1), keep all (2), depth 10
    assert qos_keyexpr(RosQos(reliability=BEST_EFFORT, durability=TRANSIENT_LOCAL, history=KEEP_ALL, depth=10)) \
        == "2:1:2,10:,:,:,,"
    full = RosQos(reliability=BEST_EFFORT, durability=TRANSIENT_LOCAL, history=KEEP_ALL, depth=5, deadline=(5, 0),
                  lifespan=(60, 3000), liveliness=3, liveliness_lease=(1, 2))
    assert qos_keyexpr(full) == "2:1:2,5:5,0:60,3000:3,1,2"
    assert parse_qos_keyexpr(qos_keyexpr(full)) == full
    # liveliness_utils.hpp's example, every field written out
    q = parse_qos_keyexpr("1:2:1,10:0,0:60,3000:1,0,0")
    assert (q.reliability, q.durability, q.history, q.depth, q.lifespan) == (1, 2, 1, 10, (60, 3000))
    # what segfuse's two modes announce
    assert qos_keyexpr(PUBLISHER_QOS["latest"]) == "2::,1:,:,:,,"       # best effort, keep last 1
    assert qos_keyexpr(PUBLISHER_QOS["reliable"]) == "::2,:,:,:,,"      # reliable, keep all
    assert PUBLISHER_QOS["latest"].describe() == "best_effort volatile keep_last 1"
    for bad in ("", "1:2:1,10", "x::,:,:,:,,", "::,:,:,:,"):
        with pytest.raises(InputDataError):
            parse_qos_keyexpr(bad)


def test_parser_splits_the_design_examples_back_into_fields():
    from pipeline.zenoh_keys import RosQos, parse_liveliness_token

    node = parse_liveliness_token(DESIGN_NODE)
    assert (node.domain_id, node.zid, node.node_id, node.entity_id, node.kind) == \
        (2, "aac3178e146ba6f1fc6e6a4085e77f21", 0, 0, "NN")
    assert (node.enclave, node.namespace, node.node_name, node.node, node.topic) == ("/", "/", "listener", "/listener",
                                                                                    None)
    pub = parse_liveliness_token(DESIGN_PUB)
    assert (pub.kind, pub.entity_id, pub.topic, pub.type_name, pub.msgtype, pub.type_hash, pub.qos) == \
        ("MP", 10, "/chatter", "std_msgs::msg::dds_::String_", "std_msgs/msg/String", STRING_HASH, RosQos(depth=7))
    assert parse_liveliness_token(DESIGN_SUB).kind == "MS"
    srv = parse_liveliness_token(DESIGN_SRV)
    assert (srv.kind, srv.topic, srv.msgtype) == ("SS", "/add_two_ints", "example_interfaces/srv/AddTwoInts")
    ns = parse_liveliness_token("@ros2_lv/0/ab12/3/4/MP/%/%robot1/talker/%robot1%chatter/std_msgs::msg::dds_::String_/"
                                + STRING_HASH + "/::,:,:,:,,")
    assert (ns.namespace, ns.node, ns.topic) == ("/robot1", "/robot1/talker", "/robot1/chatter")
    for bad in ("0/chatter/std_msgs::msg::dds_::String_/" + STRING_HASH,          # a data key
                DESIGN_NODE.replace("/NN/", "/XX/"), DESIGN_NODE + "/%chatter",   # bad kind, NN with topic
                DESIGN_PUB.rsplit("/", 1)[0],                                     # no QoS
                DESIGN_NODE.replace("@ros2_lv", "@ros_lv"), DESIGN_NODE.replace("/0/0/", "//0/")):
        with pytest.raises(InputDataError):
            parse_liveliness_token(bad)


def test_builders_refuse_what_is_no_valid_token():
    from pipeline.zenoh_keys import RosQos, node_token, publisher_token

    for kwargs in ({"node_name": ""}, {"node_name": "a/b"}, {"node_name": "a*"}, {"zid": ""},
                   {"namespace": "robot1"}, {"namespace": "/robot1/"}, {"enclave": ""}):
        args = {"domain_id": 0, "zid": "ab12", "node_id": 0, "node_name": "segfuse", **kwargs}
        with pytest.raises(InputDataError):
            node_token(**args)
    for topic in ("chatter", "/a//b", "/a/"):
        with pytest.raises(InputDataError):
            publisher_token(0, "ab12", 0, 1, "segfuse", topic, "std_msgs/msg/String", STRING_HASH, RosQos())
    with pytest.raises(InputDataError):
        publisher_token(0, "ab12", 0, 1, "segfuse", "/chatter", "std_msgs/msg/String", STRING_HASH, RosQos(), kind="NN")


# XXH3-128 (seed 0) of prefixes of DESIGN_PUB * 20, one per code path, from the xxhash package
XXH3_VECTORS = {0: 0x99aa06d3014798d86001c324468d497f, 2: 0x8df1b4e008c8180fee36adb98b965933,
                6: 0xed5c509f3cbc672eefdd7afdb1fdc59b, 13: 0x146e05c68d43378f1eabccbb588ee1de,
                40: 0x79aef08ad26580f1768e7c5281d55b28, 100: 0xfede88e9b30686a6b75486c803817b6d,
                200: 0xf8f1cdf46d7edab46cbca91f1957a65d, 239: 0xdc3744c2a439974a7a0a4a2f24607f6f,
                241: 0xf8513c4b069518c50389d78992327d24, 1100: 0xa581e6d9ba9071fb4a0e42b0ad2d9b6e,
                2100: 0x6b5cef25a08fe051581a8d74b16e37ec}


def test_xxh3_128_and_the_rmw_zenoh_gid_of_a_token():
    import xxhash

    from pipeline.zenoh_keys import gid_of

    data = (DESIGN_PUB * 20).encode()
    for n, want in XXH3_VECTORS.items():
        assert xxhash.xxh3_128_intdigest(data[:n]) == want, n
    # liveliness_utils.cpp: gid = low64 then high64 of XXH3_128bits(keyexpr), little-endian
    assert gid_of(DESIGN_PUB).hex() == "ac170f31eadcd9ff0cd86d7a17907d1c"


# --- the publisher sink on loopback ------------------------------------------------------------

class Graph:
    """A second session's view of the ROS graph: a liveliness subscriber with history."""

    def __init__(self, session, selector: str) -> None:
        self.alive: set[str] = set()
        self.events: list[tuple[str, str]] = []
        self._cond = threading.Condition()
        self._sub = session.liveliness().declare_subscriber(selector, self._on, history=True)

    def _on(self, sample) -> None:
        import zenoh

        key = str(sample.key_expr)
        with self._cond:
            if sample.kind == zenoh.SampleKind.PUT:
                self.alive.add(key)
                self.events.append(("+", key))
            else:
                self.alive.discard(key)
                self.events.append(("-", key))
            self._cond.notify_all()

    def wait(self, pred, timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: pred(set(self.alive)), timeout=timeout)

    def close(self) -> None:
        self._sub.undeclare()


@pytest.mark.parametrize("qos", ["latest", "reliable"])
def test_publisher_announces_its_node_and_topics_and_leaves_on_close(qos):
    import zenoh

    from pipeline.msgs import make_typestore
    from pipeline.sinks.publisher import PublisherConfig, ZenohPublisher
    from pipeline.zenoh_keys import zenoh_config
    from pipeline.zenoh_keys import gid_of
    from pipeline.zenoh_keys import (LATCHED_QOS, PUBLISHER_QOS, decode_attachment, liveliness_selector, parse_liveliness_token,
                                     topic_key, type_hash)

    ep = f"tcp/127.0.0.1:{free_port()}"
    observer = zenoh.open(zenoh_config(listen=[ep]))
    graph = Graph(observer, liveliness_selector(3))
    pub = None
    try:
        pub = ZenohPublisher(PublisherConfig(enabled=True, connect=[ep], qos=qos, domain_id=3), None, None,
                             camera_id="camera_front", lidar_id="lidar_top")
        from pipeline.sinks.schema import topics_for
        n_topics = len(pub.topics)
        assert list(pub.topics) == list(topics_for("camera_front", has_camera=False, replay=True))   # no rig
        assert graph.wait(lambda alive: len(alive) == 1 + n_topics), graph.alive
        ents = [parse_liveliness_token(k) for k in graph.alive]
        nodes = [e for e in ents if e.kind == "NN"]
        pubs = {e.topic: e for e in ents if e.kind == "MP"}
        assert len(nodes) == 1 and len(pubs) == n_topics
        node = nodes[0]
        zid = str(pub.session.zid())
        assert (node.domain_id, node.zid, node.node, node.enclave, node.node_id, node.entity_id) == \
            (3, zid, "/segfuse", "/", 0, 0)
        ts = make_typestore()
        assert set(pubs) == set(pub.topics)
        for topic, msgtype in pub.topics.items():
            e = pubs[topic]
            assert (e.domain_id, e.zid, e.node_id, e.node, e.namespace) == (3, zid, 0, "/segfuse", "/")
            assert e.msgtype == msgtype and e.type_hash == type_hash(ts, msgtype)
            assert e.qos == (LATCHED_QOS if pub.schema[topic].qos == "latched" else PUBLISHER_QOS[qos])
            # the data key an rmw_zenoh subscriber derives from the token is the one we put on
            assert topic_key(e.domain_id, e.topic, e.msgtype, e.type_hash) == pub.keys[topic]
            assert pub.tokens[topic] in graph.alive
        assert pubs["/segfuse/points"].type_name == "sensor_msgs::msg::dds_::PointCloud2_"
        assert pubs["/segfuse/points"].type_hash == \
            "RIHS01_9198cabf7da3796ae6fe19c4cb3bdd3525492988c70522628af5daa124bae2b5"
        assert pubs["/segfuse/status"].type_name == "segfuse_msgs::msg::dds_::FrameStatus_"
        # every put carries the GID rmw_zenoh computes for the publisher's token
        heard = []
        sub = observer.declare_subscriber("3/**", lambda smp: heard.append(smp.attachment.to_bytes()))
        assert pub.wait_for_subscribers(10)
        pub.put_cdr("/segfuse/status", b"\x00\x01\x00\x00")
        for _ in range(200):
            if heard:
                break
            time.sleep(0.02)
        assert decode_attachment(heard[0])[2] == gid_of(pub.tokens["/segfuse/status"])
        sub.undeclare()
        ids = [e.entity_id for e in ents]
        assert sorted(ids) == list(range(n_topics + 1))            # unique in the session, node 0
        # a query (what a ROS context does at start) sees the same tokens
        got = {str(r.ok.key_expr) for r in observer.liveliness().get(liveliness_selector(3), timeout=5) if r.ok}
        assert got == graph.alive
        # another domain sees nothing of ours
        assert not list(observer.liveliness().get(liveliness_selector(4), timeout=1))

        pub.close()
        assert graph.wait(lambda alive: not alive), graph.alive
        assert {k for sign, k in graph.events if sign == "-"} == {pub.node_token, *pub.tokens.values()}
        assert not list(observer.liveliness().get(liveliness_selector(3), timeout=1))
    finally:
        if pub is not None:
            pub.close()
        graph.close()
        observer.close()


def test_tokens_vanish_when_the_publisher_process_dies(tmp_path):
    """No close() at all (a crash): the router/peer drops the session's tokens with it."""
    import subprocess
    import sys

    import zenoh

    from pipeline.zenoh_keys import zenoh_config
    from pipeline.zenoh_keys import liveliness_selector

    ep = f"tcp/127.0.0.1:{free_port()}"
    observer = zenoh.open(zenoh_config(listen=[ep]))
    graph = Graph(observer, liveliness_selector(0))
    code = ("import sys, time\n"
            "from pipeline.sinks.publisher import PublisherConfig, ZenohPublisher\n"
            f"pub = ZenohPublisher(PublisherConfig(enabled=True, connect=[{ep!r}]), None, None, camera_id='cam',"
            " lidar_id='lidar_top')\n"
            "print('up', flush=True)\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        from pipeline.sinks.schema import topics_for
        n = 1 + len(topics_for("cam", has_camera=False, replay=True))          # the node and its publishers
        assert graph.wait(lambda alive: len(alive) == n), graph.alive
        t0 = time.monotonic()
        proc.kill()
        proc.wait(timeout=10)
        assert graph.wait(lambda alive: not alive, timeout=15), graph.alive
        assert time.monotonic() - t0 < 15
    finally:
        if proc.poll() is None:
            proc.kill()
        graph.close()
        observer.close()
