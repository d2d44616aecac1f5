"""Zenoh publishing and the Foxglove live view.

1. The live view's cost: the whole pipeline (ground-truth masks, recorder on, overlay off) on the
   full-size bench drive, replayed as fast as it can, three times side by side: live view on and
   nobody watching (the baseline), a viewer in another process reading every channel, and a viewer
   that subscribed to every channel and was then frozen (SIGSTOP). Printed: throughput of each,
   the ratios to the baseline (target for the frozen viewer: >= 0.9), the live-view thread's CPU
   and wall time per frame sent, and the drops (frames the live-view queue dropped, client
   outbox overflows reported by foxglove-sdk). The live view sends every frame here
   (``max_rate_hz: 0``; its default of 10 would skip frames on a fast machine).

2. Zenoh publish-to-receive latency on loopback (127.0.0.1), subscriber in another
process, for a 120k-point fused cloud (PointCloud2, 3.4 MB CDR) and a 1242x375 mono8 mask
(Image, 466 kB), p50/p99; ours = shared memory on, baseline = shared memory off (TCP).

Latency = the subscriber's wall clock at the callback minus the attachment's source timestamp
(taken just before ``put``), so it includes the CDR-buffer copy into the shared-memory pool and
the copy out of the sample; serialising the message is not included (same in both).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLES = 60
PERIOD_S = 0.03


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _subscriber(ep: str, shm: bool) -> None:
    """Child: record (topic, latency ns) per sample; print them as JSON when stdin closes."""
    import zenoh

    from pipeline.zenoh_keys import zenoh_config
    from pipeline.zenoh_keys import decode_attachment, parse_topic_key

    session = zenoh.open(zenoh_config(listen=[ep], shared_memory=shm))
    got: list[tuple[str, int, bool]] = []

    def on_sample(sample) -> None:
        sample.payload.to_bytes()
        rx = time.time_ns()
        _, src, _ = decode_attachment(sample.attachment.to_bytes())
        got.append((parse_topic_key(str(sample.key_expr))[1], rx - src, sample.payload.as_shm() is not None))

    session.declare_subscriber("0/segfuse/**", on_sample)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()
    sys.stdout.write(json.dumps(got) + "\n")
    sys.stdout.flush()
    os._exit(0)


def _payloads() -> dict[str, bytes]:
    from pipeline.msgs import make_typestore
    from pipeline.sinks.recorder import CLOUD_DTYPE, CLOUD_FIELDS

    ts = make_typestore()
    T = ts.types
    rng = np.random.default_rng(0)
    n = 120_000
    rec = np.zeros(n, CLOUD_DTYPE)
    for k in ("x", "y", "z", "intensity", "score"):
        rec[k] = rng.random(n, np.float32)
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id="lidar")
    cloud = T["sensor_msgs/msg/PointCloud2"](
        header=header, height=1, width=n,
        fields=[T["sensor_msgs/msg/PointField"](name=a, offset=b, datatype=c, count=1) for a, b, c in CLOUD_FIELDS],
        is_bigendian=False, point_step=CLOUD_DTYPE.itemsize, row_step=CLOUD_DTYPE.itemsize * n,
        data=rec.view(np.uint8).reshape(-1), is_dense=True)
    mask = rng.integers(0, 11, (375, 1242), np.uint8)
    image = T["sensor_msgs/msg/Image"](header=header, height=375, width=1242, encoding="mono8", is_bigendian=0,
                                       step=1242, data=mask.reshape(-1))
    return {"/segfuse/points": bytes(ts.serialize_cdr(cloud, "sensor_msgs/msg/PointCloud2")),
            "/segfuse/camera_front/semantic": bytes(ts.serialize_cdr(image, "sensor_msgs/msg/Image"))}


def _measure(shm: bool, payloads: dict[str, bytes]) -> dict[str, np.ndarray]:
    from pipeline.sinks.publisher import PublisherConfig, ZenohPublisher

    ep = f"tcp/127.0.0.1:{_free_port()}"
    sub = subprocess.Popen([sys.executable, __file__, "sub", ep, "1" if shm else "0"], cwd=REPO,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert sub.stdout.readline().strip() == "ready"
        pub = ZenohPublisher(PublisherConfig(enabled=True, connect=[ep], qos="reliable", shared_memory=shm,
                                             wait_subscribers_s=10), None, None, camera_id="camera_front",
                             lidar_id="lidar_top")
        shm_used = pub._shm is not None
        for topic, data in payloads.items():
            for _ in range(5):                               # warm-up, not counted
                pub.put_cdr(topic, data, stamp_ns=0)
            for _ in range(SAMPLES):
                pub.put_cdr(topic, data)
                time.sleep(PERIOD_S)
        time.sleep(0.5)
        pub.close()
        out, _ = sub.communicate("\n", timeout=60)
    finally:
        if sub.poll() is None:
            sub.kill()
    got = json.loads(out.strip().splitlines()[-1])
    res = {t: np.array([lat for tt, lat, _ in got if tt == t and lat < 10**17], np.float64) / 1e6 for t in payloads}
    res["shm_used"] = shm_used
    res["shm_samples"] = (sum(1 for *_, via in got if via), len(got))
    return res


LIVE_FRAMES = int(os.environ.get("SEGFUSE_BENCH_LIVE_FRAMES", "24"))
LIVE_ROUNDS = int(os.environ.get("SEGFUSE_BENCH_LIVE_ROUNDS", "3"))


def _viewer(port: int, freeze: bool) -> None:
    """Child: a foxglove.sdk.v1 client subscribing to every channel; prints 'subscribed', then
    reads until the server closes (or is frozen by the parent)."""
    sys.path.insert(0, str(REPO / "tests"))
    from live_clients import FoxgloveClient

    c = FoxgloveClient(port, freeze=False, timeout_s=300)
    c.subscribed.wait(120)
    sys.stdout.write("subscribed\n")
    sys.stdout.flush()
    c.join(600)
    sys.stdout.write(f"{len(c.messages)}\n")
    sys.stdout.flush()


def _live_run(drive: Path, out: Path, viewer: str) -> dict:
    import signal
    import threading

    from pipeline.run_config import parse_run_config
    from pipeline.runner import build_run

    port = _free_port()
    data = {"input": {"uri": str(drive)}, "run": {"policy": "replay", "rate": 0, "progress": False,
                                                    "frames": LIVE_FRAMES},
            "sync": {"tolerance_ms": 20, "lidar_offset_ms": 50}, "masks": "ground_truth",
            "sinks": {"recorder": {"enabled": True}, "overlay": {"enabled": False},
                      "liveview": {"enabled": True, "port": port, "max_rate_hz": 0}}, "out": str(out)}
    proc = None
    if viewer != "none":
        proc = subprocess.Popen([sys.executable, __file__, "viewer", str(port), viewer], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
    try:
        run = build_run(parse_run_config(data, "<bench>"))
        for warm in run.warm:
            warm()
        if proc is not None:
            assert proc.stdout.readline().strip() == "subscribed"
            assert run.liveview.wait_for_clients(30)
            if viewer == "frozen":
                os.kill(proc.pid, signal.SIGSTOP)
        g = run.graph
        t0 = time.perf_counter()
        g.start()
        g.wait()
        wall = time.perf_counter() - t0
        g.raise_error()
        run.recorder.close()
        lv = run.liveview
        lv.close()
        st = lv.stats()
        done = g.stats.done
    finally:
        if proc is not None:
            if viewer == "frozen":
                os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()
    return {"fps": done / wall, "done": done, **st}


def _liveview_bench() -> None:
    from benchmarks.bench_pipeline import _drive

    drive = _drive()
    out = Path(os.environ.get("SEGFUSE_BENCH_OUT", "out/bench")) / "liveview"
    runs: dict[str, list[dict]] = {"none": [], "reading": [], "frozen": []}
    for k in range(LIVE_ROUNDS):                 # interleaved, so a noisy machine hits all three alike
        for v in runs:
            runs[v].append(_live_run(drive, out / f"{v}_{k}", v))
    res = {}
    for v, rs in runs.items():
        med = sorted(rs, key=lambda r: r["fps"])[len(rs) // 2]
        res[v] = dict(med, fps=float(np.median([r["fps"] for r in rs])),
                      cpu_ms_per_frame=float(np.median([r["cpu_ms_per_frame"] for r in rs])),
                      wall_ms_per_frame=float(np.median([r["wall_ms_per_frame"] for r in rs])),
                      client_backlog_full=sum(r["client_backlog_full"] for r in rs),
                      dropped=sum(r["dropped"] for r in rs), sent=sum(r["sent"] for r in rs))
    base = res["none"]["fps"]
    print(f"live view (foxglove-sdk WebSocket, loopback), whole pipeline with ground-truth masks + recorder, "
          f"{LIVE_FRAMES} full-size frames, replay as fast as possible; {LIVE_ROUNDS} interleaved rounds, medians "
          f"(sent/dropped/outbox full: totals)")
    print(f"{'viewer':<40}{'frames/s':>10}{'ratio':>8}{'CPU ms/frame':>14}{'wall ms/frame':>15}{'sent':>6}"
          f"{'dropped':>9}{'outbox full':>13}")
    for v, label in (("none", "none (baseline)"), ("reading", "one, reading every channel"),
                     ("frozen", "one, subscribed to all, then SIGSTOP")):
        r = res[v]
        print(f"{label:<40}{r['fps']:>10.2f}{r['fps'] / base:>8.2f}{r['cpu_ms_per_frame']:>14.1f}"
              f"{r['wall_ms_per_frame']:>15.1f}{r['sent']:>6}{r['dropped']:>9}{r['client_backlog_full']:>13}")
    print(f"live view cost per frame (a viewer reading everything): {res['reading']['cpu_ms_per_frame']:.1f} ms CPU; "
          f"frozen viewer throughput ratio {res['frozen']['fps'] / base:.2f} (target >= 0.90: "
          f"{'met' if res['frozen']['fps'] / base >= 0.9 else 'MISSED'})")


def main() -> None:
    _liveview_bench()
    payloads = _payloads()
    base = _measure(False, payloads)
    ours = _measure(True, payloads)
    names = {"/segfuse/points": "fused cloud 120k points", "/segfuse/camera_front/semantic": "mask 1242x375 mono8"}
    print(f"loopback 127.0.0.1, subscriber in another process, qos reliable, {SAMPLES} samples each, "
          f"1 every {PERIOD_S * 1e3:.0f} ms; shared memory {'provider up' if ours['shm_used'] else 'NOT available'}, "
          f"samples received as shared memory: ours {ours['shm_samples'][0]}/{ours['shm_samples'][1]}, "
          f"baseline {base['shm_samples'][0]}/{base['shm_samples'][1]}")
    print(f"{'':70}{'p50 ms':>9}{'p99 ms':>9}{'n':>5}")
    for topic, label in names.items():
        size = len(payloads[topic]) / 1e6
        for who, r in (("ours: shared memory", ours), ("baseline: no shared memory (TCP)", base)):
            a = r[topic]
            print(f"{label + f' ({size:.2f} MB), ' + who:<70}{np.percentile(a, 50):>9.2f}{np.percentile(a, 99):>9.2f}"
                  f"{a.size:>5}")
        ratio = np.percentile(base[topic], 50) / np.percentile(ours[topic], 50)
        print(f"ratio (baseline p50 / ours p50), {label}: {ratio:.2f}x")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    if len(sys.argv) > 1 and sys.argv[1] == "sub":
        _subscriber(sys.argv[2], sys.argv[3] == "1")
    elif len(sys.argv) > 1 and sys.argv[1] == "viewer":
        _viewer(int(sys.argv[2]), sys.argv[3] == "frozen")
    else:
        main()
