"""Publishing faults (issue 7): a restarted publisher is picked up, malformed samples are
reported and skipped, a slow subscriber does not hold a ``qos: latest`` publisher up.
Real processes on 127.0.0.1 only; this file is also the child processes' script."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_publish_status(ep: str, first: int, n: int, garbage: bool) -> None:
    """A publisher process: n FrameStatus samples (frames first..), then optionally bad samples."""
    from pipeline.sinks.publisher import TOPIC_FRAME_STATUS, PublisherConfig, ZenohPublisher

    pub = ZenohPublisher(PublisherConfig(enabled=True, connect=[ep], qos="reliable", wait_subscribers_s=10), None,
                         None, camera_id="camera_front", lidar_id="lidar_top")
    T = pub._ts.types
    for frame in range(first, first + n):
        msg = T["segfuse_msgs/msg/FrameStatus"](
            header=pub._header(frame, "x"), frame=frame, camera_seq=frame, camera_stamp_ns=frame, lidar_stamp_ns=-1,
            publish_stamp_ns=0, pipeline_latency_ms=0.0, frames_dropped=0, lidar_missing=True, fused=False,
            ego_motion=False)
        pub._publish(TOPIC_FRAME_STATUS, msg)
    if garbage:
        pub.put_cdr(TOPIC_FRAME_STATUS, b"\x00\x01\x00\x00garbage")                 # truncated CDR
        pub._pubs[TOPIC_FRAME_STATUS].put(b"\x00\x01\x00\x00", attachment=None)     # no attachment
    pub.close()


def child_slow_subscriber(ep: str) -> None:
    import os
    import time

    import zenoh

    from pipeline.zenoh_keys import zenoh_config

    session = zenoh.open(zenoh_config(listen=[ep]))
    got = []

    def slow(sample) -> None:
        got.append(1)
        time.sleep(0.5)

    session.declare_subscriber("0/segfuse/**", slow)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()                    # until the test closes stdin
    sys.stdout.write(f"received {len(got)}\n")
    sys.stdout.flush()
    os._exit(0)                             # not close(): it would wait for the queued slow callbacks


def child_publish_flood(ep: str, n: int) -> None:
    import os

    from pipeline.sinks.publisher import TOPIC_POINTS, PublisherConfig, ZenohPublisher

    pub = ZenohPublisher(PublisherConfig(enabled=True, connect=[ep], qos="latest", wait_subscribers_s=10), None,
                         None, camera_id="camera_front", lidar_id="lidar_top")
    payload = os.urandom(3_400_000)          # a fused cloud's size
    for _ in range(n):
        pub.put_cdr(TOPIC_POINTS, payload)
    sys.stdout.write(f"put {pub.samples}\n")
    pub.close()


def _child(*args: str) -> list[str]:
    return [sys.executable, __file__, *args]


def test_restarted_publisher_is_picked_up_and_malformed_samples_are_skipped():
    from pipeline.planner_api import FusedSubscriber

    ep = f"tcp/127.0.0.1:{free_port()}"
    with FusedSubscriber(listen=[ep], depth=100) as sub:
        for first, garbage in ((0, False), (3, True)):          # the publisher process, then its restart
            r = subprocess.run(_child("status", ep, str(first), "3", "1" if garbage else "0"), cwd=REPO,
                               capture_output=True, text=True, timeout=40)
            assert r.returncode == 0, r.stderr[-2000:]
        got = [sub.take("status", timeout_s=10) for _ in range(6)]
        assert all(g is not None for g in got)
        assert [g.data["frame"] for g in got] == list(range(6))
        assert [g.sequence_number for g in got] == [1, 2, 3, 1, 2, 3]      # a new publisher, counting afresh
        # the two bad samples: reported and skipped, the subscriber keeps going
        for _ in range(200):
            if sub.malformed >= 2:
                break
            sub.take("status", timeout_s=0.05)
        assert sub.malformed == 2 and sub.take("status") is None


def test_a_slow_subscriber_does_not_hold_up_a_latest_qos_publisher():
    ep = f"tcp/127.0.0.1:{free_port()}"
    slow = subprocess.Popen(_child("slow", ep), cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert slow.stdout.readline().strip() == "ready"
        n = 200
        # blocked puts would need n x 0.5 s = 100 s: past the timeout, the test fails
        r = subprocess.run(_child("flood", ep, str(n)), cwd=REPO, capture_output=True, text=True, timeout=45)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"put {n}" in r.stdout
        out, _ = slow.communicate("\n", timeout=30)
        received = int(out.split("received")[1])
        assert 0 < received < n                                # it got some; the rest were dropped, not waited for
    finally:
        if slow.poll() is None:
            slow.kill()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    kind = sys.argv[1]
    if kind == "status":
        child_publish_status(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1")
    elif kind == "slow":
        child_slow_subscriber(sys.argv[2])
    elif kind == "flood":
        child_publish_flood(sys.argv[2], int(sys.argv[3]))
