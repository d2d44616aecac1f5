"""The graph: the ONE module that knows about threads, queues, back-pressure, the live and
replay policies, and shutdown. Stages stay plain functions over typed data.

::

    source thread(s) ──► ingest ──► sync thread ──► entry ──► stage ──► stage ──► ... ──► done
                                                               │                ▲
                                                   Parallel:   ├─► branch A ─┤  (joined, in order)
                                                               └─► branch B ─┘

- Every stage runs on its own worker thread and takes work from a bounded queue
  (``queue_depth``); a ``Parallel`` stage runs its branches (DeepLab and Mask R-CNN) on one
  thread each, on the same frame, and passes the frame on when every branch is done. Frames
  leave every stage in the order they entered.
- **replay**: every put blocks when the next queue is full (back-pressure up to the source):
  lossless, and with one source thread feeding one sync, deterministic. ``rate`` paces the
  source by the recorded stamps (1 = recorded speed, 0 = as fast as it can).
- **live**: the source is never blocked; the entry queue holds one frame and the newest wins
  (an older frame still waiting is dropped and counted), so at most ``capacity`` frames are in
  flight and end-to-end latency stays bounded. The sync also gives up on a late LiDAR sweep
  after ``sync.lidar_timeout_ms``.
- **shutdown** (``stop()``; ``with graph.stop_on_signals():`` maps SIGINT/SIGTERM to it, a
  second signal aborts the drain): the sources stop, the sync decides every
  waiting frame, and every frame already accepted runs to the end before ``wait()`` returns;
  nothing accepted is lost. A stage that raises ``InputDataError`` or ``EngineError`` on a
  frame drops that frame (counted, with the reason); any other exception stops the graph and
  ``raise_error()`` re-raises it in the caller's thread.

Each stage's (start, end) monotonic-clock stamps go into the frame's ``FrameTrace``.
"""
from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import EngineError, InputDataError, SegfuseError

log = logging.getLogger(__name__)

POLICIES = ("replay", "live")
_END = object()                     # end of stream, passed down the stages
_POLL_S = 0.05


@dataclass
class Stage:
    """A plain function over the frame's work record (``fn(work) -> None``, filling its part)."""

    name: str
    fn: Callable[[Any], None]


@dataclass
class Parallel:
    """Branches run concurrently on the same frame, each on its own thread."""

    name: str
    branches: list[Stage]


@dataclass
class Policy:
    mode: str = "replay"                  # replay | live
    rate: float = 0.0                     # replay pacing by recorded stamps; 0 = as fast as possible
    queue_depth: int = 2
    max_frames: int | None = None         # stop the sources after this many camera frames

    def __post_init__(self) -> None:
        if self.mode not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.mode!r}")


@dataclass
class GraphStats:
    frames_in: int = 0                    # frames the sync produced
    accepted: int = 0                     # frames that entered the stages
    dropped: int = 0                      # live: older frames dropped for newer ones
    done: int = 0                         # frames through every stage
    failed: dict[str, int] = field(default_factory=dict)      # stage -> frames dropped on an error
    failures: list[str] = field(default_factory=list)         # their reasons (first 50)
    in_flight: int = 0
    max_in_flight: int = 0
    latency_ns: list[int] = field(default_factory=list)       # source -> done, per finished frame
    source_busy_ns: int = 0               # time the source thread(s) spent producing items
    source_items: int = 0
    started_ns: int = 0
    first_done_ns: int = 0
    last_done_ns: int = 0
    stopped_by: str | None = None         # "signal", "frames", None (source ended)
    source_errors: list[str] = field(default_factory=list)   # inputs that ended early, unreadable

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())


class _BlockingQueue:
    """Replay (and every queue past the entry): a bounded queue whose put blocks (back-pressure)."""

    def __init__(self, maxsize: int) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=maxsize)

    def put(self, item: Any, abort: threading.Event) -> None:
        while not abort.is_set():
            try:
                self._q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def get(self, timeout: float) -> Any:
        return self._q.get(timeout=timeout)


class _LatestQueue(_BlockingQueue):
    """Live entry queue: put never blocks; when full, the oldest frame is dropped (``on_drop``).
    The end marker waits like any blocking put: the last frame is not dropped."""

    def __init__(self, maxsize: int, on_drop: Callable[[Any], None]) -> None:
        super().__init__(maxsize)
        self._on_drop = on_drop

    def put(self, item: Any, abort: threading.Event) -> None:
        if item is _END:
            super().put(item, abort)
            return
        while True:
            try:
                self._q.put_nowait(item)
                return
            except queue.Full:
                try:
                    old = self._q.get_nowait()
                except queue.Empty:
                    continue
                self._on_drop(old)


class Graph:
    """Runs sources -> sync -> stages. ``start()``, then ``wait()`` until done; ``stop()`` from
    anywhere (a signal handler included) drains and ends the run."""

    def __init__(self, sources: list[Any], sync: Any, stages: list[Stage | Parallel], policy: Policy) -> None:
        if not sources:
            raise ValueError("a graph needs at least one source")
        if policy.mode == "replay" and len(sources) > 1:
            raise ValueError("replay reads one source (a drive or bag) so that its order is deterministic")
        self.sources = sources
        self.sync = sync
        self.stages = stages
        self.policy = policy
        self.stats = GraphStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()          # graceful: stop sources, drain
        self._abort = threading.Event()         # fatal error: stop everything now
        self._finished = threading.Event()
        self._error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._running = 0
        self._ingest: queue.Queue = queue.Queue(maxsize=0 if policy.mode == "live" else 4 * policy.queue_depth + 4)
        # live: one frame per queue, so a frame waits behind at most one other at each stage
        depth = policy.queue_depth if policy.mode == "replay" else 1
        self._depth = depth
        self._entry = (_LatestQueue(1, self._dropped) if policy.mode == "live" else _BlockingQueue(depth))
        self.capacity = 0                        # frames that can be in flight at most (live bound)
        self.stage_traces: list[Any] = []        # FrameTrace of every finished frame, in order

    # -- public ----------------------------------------------------------------------------
    def start(self) -> "Graph":
        self.stats.started_ns = time.monotonic_ns()
        self._build()
        for i, src in enumerate(self.sources):
            self._spawn(f"source-{i}", self._run_source, src)
        self._spawn("sync", self._run_sync)
        return self

    def stop(self, reason: str = "signal") -> None:
        """Graceful stop: sources stop, in-flight frames drain. Safe from signal handlers."""
        if not self._stop.is_set():
            self.stats.stopped_by = self.stats.stopped_by or reason
            self._stop.set()
            for s in self.sources:
                s.stop()

    def abort(self, exc: BaseException | None = None) -> None:
        with self._lock:
            if exc is not None and self._error is None:
                self._error = exc
        self._abort.set()
        self.stop("error")

    def wait(self, timeout: float | None = None) -> bool:
        """True once every thread has finished (or the graph aborted)."""
        if not self._finished.wait(timeout):
            return False
        for t in self._threads:
            t.join(timeout=5.0)
        return True

    def stop_on_signals(self) -> "_StopOnSignals":
        """``with graph.stop_on_signals(): ...``: SIGINT/SIGTERM stop the graph gracefully."""
        return _StopOnSignals(self)

    @property
    def error(self) -> BaseException | None:
        return self._error

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    # -- building --------------------------------------------------------------------------
    def _build(self) -> None:
        depth = self._depth
        n = len(self.stages)
        # Frames that can be in flight at most: the sync thread's hand, the entry queue, and per
        # worker one frame in service plus its input queue (stage 0 reads the entry queue).
        self.capacity = 1 + (1 if self.policy.mode == "live" else depth)
        inputs: list[list[Any]] = []
        for i, st in enumerate(self.stages):
            if isinstance(st, Parallel):
                inputs.append([_BlockingQueue(depth) for _ in st.branches])
                self.capacity += (depth + 1) * len(st.branches) + (1 if i == 0 else 0)
            else:
                inputs.append([self._entry if i == 0 else _BlockingQueue(depth)])
                self.capacity += 1 + (depth if i else 0)
        for i, st in enumerate(self.stages):
            forward = self._forwarder(inputs[i + 1] if i + 1 < n else None,
                                      self.stages[i + 1] if i + 1 < n else None)
            if isinstance(st, Parallel):
                join = _Join(st.name, len(st.branches), forward)
                if i == 0:
                    self._spawn(f"{st.name}-fanout", self._run_fanout, self._forwarder(inputs[0], st))
                for branch, q in zip(st.branches, inputs[i]):
                    name = f"{st.name}.{branch.name}"
                    self._spawn(name, self._run_stage, branch, q, join.arrive, name)
            else:
                self._spawn(st.name, self._run_stage, st, inputs[i][0], forward, st.name)

    def _forwarder(self, targets: list[Any] | None, stage: Stage | Parallel | None) -> Callable[[Any], None]:
        if targets is None:
            return self._done
        counter = [0]
        tag = f"_seq_{stage.name}" if isinstance(stage, Parallel) else None

        def forward(item: Any) -> None:
            if tag is not None and item is not _END:
                setattr(item, tag, counter[0])     # the join passes frames on in this order
                counter[0] += 1
            for q in targets:
                q.put(item, self._abort)
        return forward

    def _spawn(self, name: str, fn: Callable, *args: Any) -> None:
        def target() -> None:
            try:
                fn(*args)
            except BaseException as exc:           # a bug or an unexpected failure: stop the run
                log.error("%s thread failed: %r", name, exc, exc_info=exc)
                self.abort(exc)
            finally:
                with self._lock:
                    self._running -= 1
                    last = self._running == 0
                if last:
                    self._finished.set()
        t = threading.Thread(target=target, name=f"segfuse-{name}", daemon=True)
        with self._lock:
            self._running += 1
        self._threads.append(t)
        t.start()

    # -- sources and sync ------------------------------------------------------------------
    def _run_source(self, src: Any) -> None:
        from pipeline.sources.base import CameraInput, PoseInput

        live = self.policy.mode == "live"
        rate = self.policy.rate
        t0_wall = s0 = None
        paced_stamp = None
        busy_since_camera = 0                   # reading time of the items since the last camera frame
        try:
            it = iter(src)
            while not self._stop.is_set():
                t_read = time.monotonic_ns()
                try:
                    item = next(it)
                except StopIteration:
                    break
                except SegfuseError as exc:       # the rest of the input is unreadable: end it there,
                    log.error("input ended early: %s", exc)     # and finish what was accepted
                    with self._lock:
                        self.stats.source_errors.append(str(exc))
                    break
                now = time.monotonic_ns()
                busy_since_camera += now - t_read
                with self._lock:
                    self.stats.source_busy_ns += now - t_read
                    self.stats.source_items += 1
                if rate > 0 and not isinstance(item, PoseInput):
                    stamp = item.stamp_ns if paced_stamp is None else max(paced_stamp, item.stamp_ns)
                    paced_stamp = stamp
                    if t0_wall is None:
                        t0_wall, s0 = now, stamp
                    due = t0_wall + (stamp - s0) / rate
                    if due > now and self._stop.wait((due - now) / 1e9):
                        break
                if isinstance(item, CameraInput):
                    item.received_ns = time.monotonic_ns()
                    item.source_span_ns = (now - busy_since_camera, now)    # its share of reading
                    busy_since_camera = 0
                if live:
                    self._ingest.put(item)
                else:
                    while not self._abort.is_set():
                        try:
                            self._ingest.put(item, timeout=_POLL_S)
                            break
                        except queue.Full:
                            continue
        finally:
            try:
                src.close()
            finally:
                while not self._abort.is_set():
                    try:
                        self._ingest.put(("__source_end__", src), timeout=_POLL_S)
                        break
                    except queue.Full:
                        continue

    def _run_sync(self) -> None:
        live = self.policy.mode == "live"
        running = len(self.sources)
        try:
            while running and not self._abort.is_set():
                try:
                    item = self._ingest.get(timeout=_POLL_S if live else 0.5)
                except queue.Empty:
                    if live:
                        self._emit(self.sync.poll(time.monotonic_ns()))
                    continue
                if isinstance(item, tuple) and item and item[0] == "__source_end__":
                    running -= 1
                    continue
                if self._stop.is_set() and self.stats.stopped_by == "frames":
                    continue                       # the frame budget is spent; drain what the source sent
                self._emit(self.sync.push(item, time.monotonic_ns()))
            if not self._abort.is_set() and self.stats.stopped_by != "frames":
                self._emit(self.sync.flush())
            else:
                self.sync.flush()
        finally:
            if not self._abort.is_set():
                self._entry.put(_END, self._abort)

    def _emit(self, works: list[Any]) -> None:
        for w in works:
            if self.policy.max_frames is not None and self.stats.frames_in >= self.policy.max_frames:
                self.stop("frames")
                return
            t = time.monotonic_ns()
            if w.synced.trace is not None:
                w.synced.trace.stages["sync"] = (w.received_ns or t, t)
                span = w.source_span_ns
                if span:
                    w.synced.trace.stages["source"] = span
            with self._lock:
                self.stats.frames_in += 1
                self.stats.accepted += 1
                self.stats.in_flight += 1
                self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
            self._entry.put(w, self._abort)
            if self.policy.max_frames is not None and self.stats.frames_in >= self.policy.max_frames:
                self.stop("frames")

    def _dropped(self, work: Any) -> None:
        with self._lock:
            self.stats.dropped += 1
            self.stats.accepted -= 1
            self.stats.in_flight -= 1

    # -- stages ----------------------------------------------------------------------------
    def _run_fanout(self, forward: Callable[[Any], None]) -> None:
        while True:
            item = self._get(self._entry)
            if item is None:
                return
            forward(item)
            if item is _END:
                return

    def _get(self, q: Any) -> Any:
        while not self._abort.is_set():
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        return None

    def _run_stage(self, stage: Stage, q: Any, forward: Callable[[Any], None], trace_name: str) -> None:
        while True:
            item = self._get(q)
            if item is None:
                return
            if item is _END:
                forward(_END)
                return
            if getattr(item, "_failed", None):
                forward(item)                     # failed in a sibling branch: the join drops it
                continue
            t0 = time.monotonic_ns()
            try:
                stage.fn(item)
            except (InputDataError, EngineError) as exc:
                item._failed = (trace_name, str(exc))
                log.warning("frame %s dropped at %s: %s", getattr(item, "index", "?"), trace_name, exc)
            t1 = time.monotonic_ns()
            trace = getattr(getattr(item, "synced", None), "trace", None)
            if trace is not None:
                trace.stages[trace_name] = (t0, t1)
            forward(item)

    def _done(self, item: Any) -> None:
        if item is _END:
            return
        now = time.monotonic_ns()
        failed = getattr(item, "_failed", None)
        with self._lock:
            self.stats.in_flight -= 1
            if failed:
                stage, reason = failed
                self.stats.failed[stage] = self.stats.failed.get(stage, 0) + 1
                if len(self.stats.failures) < 50:
                    self.stats.failures.append(f"frame {item.index} at {stage}: {reason}")
                return
            self.stats.done += 1
            if item.synced.trace is not None:
                self.stage_traces.append(item.synced.trace)
            if item.received_ns:
                self.stats.latency_ns.append(now - item.received_ns)
            if not self.stats.first_done_ns:
                self.stats.first_done_ns = now
                log.info("first frame out after %.0f ms", (now - self.stats.started_ns) / 1e6)
            self.stats.last_done_ns = now


class _StopOnSignals:
    """SIGINT/SIGTERM -> ``graph.stop()`` (drain, then the caller closes the sinks); a second
    signal aborts the drain. Handlers are installed only from the main thread, and restored."""

    def __init__(self, graph: "Graph") -> None:
        self.graph = graph
        self.count = 0
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> "_StopOnSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count == 1:
            log.warning("%s: stopping the sources and draining the frames in flight (again to abort)", name)
            self.graph.stop("signal")
        else:
            log.error("%s again: aborting the drain", name)
            self.graph.abort(None)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


class _Join:
    """Passes a frame on once every branch of a Parallel stage is done with it, in the order the
    frames entered (branch threads finish in their own time; order is restored here)."""

    def __init__(self, name: str, branches: int, forward: Callable[[Any], None]) -> None:
        self.tag = f"_seq_{name}"
        self.branches = branches
        self.forward = forward
        self._left: dict[int, int] = {}          # seq -> branches still working
        self._ready: dict[int, Any] = {}         # seq -> frame done by every branch, waiting its turn
        self._next = 0
        self._ends = 0
        self._lock = threading.Lock()

    def arrive(self, item: Any) -> None:
        with self._lock:                         # forwarding under the lock keeps the order
            if item is _END:
                self._ends += 1
                if self._ends == self.branches:
                    self.forward(_END)
                return
            seq = getattr(item, self.tag)
            left = self._left.get(seq, self.branches) - 1
            if left:
                self._left[seq] = left
                return
            self._left.pop(seq, None)
            self._ready[seq] = item
            while self._next in self._ready:
                self.forward(self._ready.pop(self._next))
                self._next += 1
