"""The graph: the ONE module that knows about threads, queues, back-pressure, the live and
replay policies, and shutdown. Stages stay plain functions over typed values.

::

    source thread(s) ──► ingest ──► sync thread ──► entry ──► stage ──► stage ──► ... ──► FrameResult ──► sinks
                                                               │                ▲
                                                   Parallel:   ├─► branch A ─┤  (joined, in order)
                                                               └─► branch B ─┘

- A ``Stage`` declares the types it takes and the type it gives (``Stage("fuse", fuse,
  takes=(SyncedFrame, Masks), gives=FusionResult)``); the graph checks the wiring when it is
  built (every input made upstream) and each output's type when it is made. The sync gives
  ``SyncedFrame``; after the last stage the graph makes one frozen ``FrameResult`` and every
  sink takes that. Stages never see the graph's bookkeeping: each frame travels in an
  ``_Envelope`` the graph owns (sequence, trace, receive time, failure, the typed values).
- Every stage runs on its own worker thread and takes work from a bounded queue
  (``queue_depth``); a ``Parallel`` stage runs its branches (DeepLab and Mask R-CNN, or the
  sinks) on one thread each, on the same frame, joins their outputs (``join``) and passes the
  frame on when every branch is done. Frames leave every stage in the order they entered.
- **replay**: every put blocks when the next queue is full (back-pressure up to the source):
  lossless, and with one source thread feeding one sync, deterministic. ``rate`` paces the
  source by the recorded stamps (1 = recorded speed, 0 = as fast as it can) of the items that
  say ``paced`` (``SourceItem``: a small protocol; the graph imports no source class).
- **live**: the source is never blocked; the entry queue holds one frame and the newest wins
  (an older frame still waiting is dropped and counted), so at most ``capacity`` frames are in
  flight and end-to-end latency stays bounded. The sync also gives up on a late LiDAR sweep
  after ``sync.lidar_timeout_ms``.
- **lossy sinks** (``Stage(..., lossy=N)``, e.g. the live view): fed outside the join through a
  queue of their own that holds ``N`` results, the newest winning (older ones dropped and counted
  in ``GraphStats.sink_dropped``), so a slow or stuck viewer never slows the frames; a frame is
  done when the other sinks are. At the end they finish what is queued.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pipeline.config import setting
from pipeline.errors import EngineError, InputDataError, SegfuseError
from pipeline.types import Counters, FrameResult, FrameTrace, FusionResult, Masks, SyncedFrame

log = logging.getLogger(__name__)

POLICIES = ("replay", "live")
_END = object()                     # end of stream, passed down the stages
_POLL_S = 0.05
T = TypeVar("T")


class SourceItem(Protocol):
    """What the graph needs of a source's item: its sensor time, whether replay paces by it, and
    whether it is a camera image (the start of a frame: receive time and reading span)."""

    paced: bool
    starts_frame: bool

    @property
    def stamp_ns(self) -> int: ...


class Source(Protocol):
    def __iter__(self) -> Any: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


class Sync(Protocol[T]):
    """Pairs items into frames; ``token`` rides along with a frame-starting item and comes back
    with the SyncedFrame it became (the graph's receive time and reading span)."""

    def push(self, item: Any, now_ns: int, token: T | None = None) -> list[tuple[SyncedFrame, T | None]]: ...
    def poll(self, now_ns: int) -> list[tuple[SyncedFrame, T | None]]: ...
    def flush(self) -> list[tuple[SyncedFrame, T | None]]: ...


@dataclass
class Stage:
    """A plain function ``fn(*values of takes) -> value of gives`` (``gives=None``: a sink, which
    returns nothing). ``takes`` names the types it reads from the frame, in argument order;
    ``optional``: the stage may give nothing for a frame (None), and later stages that take
    its type must then be optional readers: the FrameResult, or an optional stage (it is
    called with None for a value the frame does not have, e.g. the tracking stage on a
    camera-only frame)."""

    name: str
    fn: Callable[..., Any]
    takes: tuple[type, ...] = (SyncedFrame,)
    gives: type | None = None
    optional: bool = False
    lossy: int = 0                        # sinks only: > 0, a sink that never holds the run back (below)


@dataclass
class Parallel:
    """Branches run concurrently on the same frame, each on its own thread; ``join`` turns the
    branches' outputs (in branch order) into one value of ``gives`` (None: sinks)."""

    name: str
    branches: list[Stage]
    gives: type | None = None
    join: Callable[[list[Any]], Any] | None = None


@dataclass
class Policy:
    """How the graph runs: the ``run:`` section of a run config (pipeline.runner.RunOptions adds
    the runner's own keys)."""

    policy: str = setting("replay", choices=POLICIES, doc="replay: lossless, deterministic, paced by --rate | live: "
                          "the newest frame wins, drops counted (--policy)")
    rate: float = setting(0.0, min=0, doc="replay pacing: 1 = recorded speed, 0 = as fast as it can (--rate)")
    frames: int | None = setting(None, min=1, doc="stop after this many camera frames (null: the whole input; "
                                 "--frames)")
    queue_depth: int = setting(2, min=1, max=64, doc="frames each stage's input queue holds (replay; live holds one)")

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")


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
    sink_dropped: dict[str, int] = field(default_factory=dict)   # lossy sink -> results it never got
    sink_failed: dict[str, int] = field(default_factory=dict)    # lossy sink -> results it failed on

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())


@dataclass(frozen=True)
class _Arrival:
    """Handed to the sync with a camera item and back with its frame."""

    received_ns: int                      # monotonic clock when the source produced the image
    span_ns: tuple[int, int]              # monotonic (start, end) of reading it and the items before it


@dataclass
class _Envelope:
    """One frame on its way through the stages; owned by the graph, never seen by a stage."""

    index: int
    arrival: _Arrival | None
    trace: FrameTrace
    values: dict[type, object]            # type -> the value of that type (SyncedFrame, Masks, ...)
    failure: tuple[str, str] | None = None                      # (stage, reason)
    order: dict[str, int] = field(default_factory=dict)         # Parallel name -> position in its join
    parts: dict[str, object] = field(default_factory=dict)      # branch name -> its output

    @property
    def received_ns(self) -> int:
        return self.arrival.received_ns if self.arrival is not None else 0


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
    """Runs sources -> sync -> stages -> sinks. ``start()``, then ``wait()`` until done; ``stop()``
    from anywhere (a signal handler included) drains and ends the run."""

    def __init__(self, sources: Sequence[Source], sync: Sync, stages: Sequence[Stage | Parallel], policy: Policy,
                 sinks: Sequence[Stage] = ()) -> None:
        if not sources:
            raise ValueError("a graph needs at least one source")
        if policy.policy == "replay" and len(sources) > 1:
            raise ValueError("replay reads one source (a drive or bag) so that its order is deterministic")
        self.sources = list(sources)
        self.sync = sync
        self.stages: list[Stage | Parallel] = list(stages)
        self.sinks = list(sinks)
        _check_wiring(self.stages, self.sinks)
        self.policy = policy
        self.stats = GraphStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()          # graceful: stop sources, drain
        self._abort = threading.Event()         # fatal error: stop everything now
        self._finished = threading.Event()
        self._error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._running = 0
        self._ingest: queue.Queue = queue.Queue(maxsize=0 if policy.policy == "live" else 4 * policy.queue_depth + 4)
        # live: one frame per queue, so a frame waits behind at most one other at each stage
        depth = policy.queue_depth if policy.policy == "replay" else 1
        self._depth = depth
        self._entry = (_LatestQueue(1, self._dropped) if policy.policy == "live" else _BlockingQueue(depth))
        self._lossy: list[_LatestQueue] = []     # the lossy sinks' queues (made by _build)
        self.capacity = 0                        # frames that can be in flight at most (live bound)
        self.stage_traces: list[FrameTrace] = []  # FrameTrace of every finished frame, in order

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

    def counters(self) -> Counters:
        with self._lock:
            return Counters(done=self.stats.done, dropped=self.stats.dropped, failed=self.stats.failed_total)

    def all_stages(self) -> list[Stage]:
        """Every callable the graph runs (branches and sinks included), e.g. for wrapping."""
        out: list[Stage] = []
        for st in [*self.stages, *self.sinks]:
            out.extend(st.branches if isinstance(st, Parallel) else [st])
        return out

    # -- building --------------------------------------------------------------------------
    def _build(self) -> None:
        depth = self._depth
        chain: list[Stage | Parallel] = list(self.stages)
        joined = [s for s in self.sinks if not s.lossy]
        if len(joined) > 1:
            chain.append(Parallel("sinks", joined))
        elif joined:
            chain.append(joined[0])
        self._lossy = []
        for s in self.sinks:
            if s.lossy:
                q = _LatestQueue(s.lossy, lambda _item, name=s.name: self._sink_dropped(name))
                self._lossy.append(q)
                self._spawn(s.name, self._run_lossy, s, q)
        n = len(chain)
        # Frames that can be in flight at most: the sync thread's hand, the entry queue, and per
        # worker one frame in service plus its input queue (stage 0 reads the entry queue).
        self.capacity = 1 + (1 if self.policy.policy == "live" else depth)
        inputs: list[list[Any]] = []
        for i, st in enumerate(chain):
            if isinstance(st, Parallel):
                inputs.append([_BlockingQueue(depth) for _ in st.branches])
                self.capacity += (depth + 1) * len(st.branches) + (1 if i == 0 else 0)
            else:
                inputs.append([self._entry if i == 0 else _BlockingQueue(depth)])
                self.capacity += 1 + (depth if i else 0)
        last_stage = len(self.stages) - 1
        for i, st in enumerate(chain):
            nxt = chain[i + 1] if i + 1 < n else None
            forward = self._forwarder(inputs[i + 1] if nxt is not None else None, nxt, make_result=i == last_stage)
            if isinstance(st, Parallel):
                join = _Join(st, forward)
                if i == 0:
                    self._spawn(f"{st.name}-fanout", self._run_fanout, self._forwarder(inputs[0], st))
                for branch, q in zip(st.branches, inputs[i]):
                    name = f"{st.name}.{branch.name}"
                    self._spawn(name, self._run_stage, branch, q, join.arrive, name)
            else:
                self._spawn(st.name, self._run_stage, st, inputs[i][0], forward, st.name)

    def _forwarder(self, targets: list[Any] | None, stage: Stage | Parallel | None, *,
                   make_result: bool = False) -> Callable[[Any], None]:
        counter = [0]
        order = stage.name if isinstance(stage, Parallel) else None

        def forward(env: Any) -> None:
            if make_result:
                if env is _END:
                    for q in self._lossy:
                        q.put(_END, self._abort)
                elif env.failure is None:
                    result = env.values[FrameResult] = self._result(env)
                    for q in self._lossy:
                        q.put(result, self._abort)       # never blocks: the newest wins
            if targets is None:
                self._done(env)
                return
            if env is not _END and order is not None:
                env.order[order] = counter[0]          # the join passes frames on in this order
                counter[0] += 1
            for q in targets:
                q.put(env, self._abort)
        return forward

    def _result(self, env: _Envelope) -> FrameResult:
        frame = env.values[SyncedFrame]
        return FrameResult(index=env.index, frame=frame, masks=env.values.get(Masks) or Masks(),
                           fusion=env.values.get(FusionResult), received_ns=env.received_ns,
                           counters=self.counters())

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
    def _run_source(self, src: Source) -> None:
        live = self.policy.policy == "live"
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
                if rate > 0 and item.paced:
                    stamp = item.stamp_ns if paced_stamp is None else max(paced_stamp, item.stamp_ns)
                    paced_stamp = stamp
                    if t0_wall is None:
                        t0_wall, s0 = now, stamp
                    due = t0_wall + (stamp - s0) / rate
                    if due > now and self._stop.wait((due - now) / 1e9):
                        break
                arrival = None
                if item.starts_frame:
                    arrival = _Arrival(time.monotonic_ns(), (now - busy_since_camera, now))   # its share of reading
                    busy_since_camera = 0
                if live:
                    self._ingest.put((item, arrival))
                else:
                    while not self._abort.is_set():
                        try:
                            self._ingest.put((item, arrival), timeout=_POLL_S)
                            break
                        except queue.Full:
                            continue
        finally:
            try:
                src.close()
            finally:
                while not self._abort.is_set():
                    try:
                        self._ingest.put(_SourceEnd(src), timeout=_POLL_S)
                        break
                    except queue.Full:
                        continue

    def _run_sync(self) -> None:
        live = self.policy.policy == "live"
        running = len(self.sources)
        try:
            while running and not self._abort.is_set():
                try:
                    got = self._ingest.get(timeout=_POLL_S if live else 0.5)
                except queue.Empty:
                    if live:
                        self._emit(self.sync.poll(time.monotonic_ns()))
                    continue
                if isinstance(got, _SourceEnd):
                    running -= 1
                    continue
                if self._stop.is_set() and self.stats.stopped_by == "frames":
                    continue                       # the frame budget is spent; drain what the source sent
                item, arrival = got
                self._emit(self.sync.push(item, time.monotonic_ns(), arrival))
            if not self._abort.is_set() and self.stats.stopped_by != "frames":
                self._emit(self.sync.flush())
            else:
                self.sync.flush()
        finally:
            if not self._abort.is_set():
                self._entry.put(_END, self._abort)

    def _emit(self, frames: list[tuple[SyncedFrame, Any]]) -> None:
        for frame, arrival in frames:
            if self.policy.frames is not None and self.stats.frames_in >= self.policy.frames:
                self.stop("frames")
                return
            t = time.monotonic_ns()
            trace = FrameTrace(frame.frame_index, frame.stamp_ns)
            trace.stages["sync"] = (arrival.received_ns if arrival is not None else t, t)
            if arrival is not None:
                trace.stages["source"] = arrival.span_ns
            env = _Envelope(frame.frame_index, arrival, trace, {SyncedFrame: frame})
            with self._lock:
                self.stats.frames_in += 1
                self.stats.accepted += 1
                self.stats.in_flight += 1
                self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
            self._entry.put(env, self._abort)
            if self.policy.frames is not None and self.stats.frames_in >= self.policy.frames:
                self.stop("frames")

    def _dropped(self, env: _Envelope) -> None:
        with self._lock:
            self.stats.dropped += 1
            self.stats.accepted -= 1
            self.stats.in_flight -= 1

    # -- stages ----------------------------------------------------------------------------
    def _run_fanout(self, forward: Callable[[Any], None]) -> None:
        while True:
            env = self._get(self._entry)
            if env is None:
                return
            forward(env)
            if env is _END:
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
            env = self._get(q)
            if env is None:
                return
            if env is _END:
                forward(_END)
                return
            if env.failure is not None:
                forward(env)                      # failed upstream or in a sibling branch: the join drops it
                continue
            t0 = time.monotonic_ns()
            try:
                out = stage.fn(*[env.values[t] if not stage.optional else env.values.get(t) for t in stage.takes])
            except (InputDataError, EngineError) as exc:
                env.failure = (trace_name, str(exc))
                log.warning("frame %s dropped at %s: %s", env.index, trace_name, exc)
            else:
                if stage.gives is not None and not (out is None and stage.optional):
                    if not isinstance(out, stage.gives):      # a wiring bug: stop the run, name the stage
                        raise TypeError(f"stage {trace_name} must give {stage.gives.__name__}, gave "
                                        f"{type(out).__name__}")
                    if trace_name == stage.name:
                        env.values[stage.gives] = out
                    else:
                        env.parts[trace_name] = out
                elif out is not None:
                    raise TypeError(f"stage {trace_name} gives nothing but returned {type(out).__name__}")
            t1 = time.monotonic_ns()
            env.trace.stages[trace_name] = (t0, t1)
            forward(env)

    def _run_lossy(self, sink: Stage, q: Any) -> None:
        while True:
            result = self._get(q)
            if result is None or result is _END:
                return
            try:
                sink.fn(result)
            except (InputDataError, EngineError) as exc:
                with self._lock:
                    self.stats.sink_failed[sink.name] = self.stats.sink_failed.get(sink.name, 0) + 1
                log.warning("frame %s not given to %s: %s", result.index, sink.name, exc)

    def _sink_dropped(self, name: str) -> None:
        with self._lock:
            self.stats.sink_dropped[name] = self.stats.sink_dropped.get(name, 0) + 1

    def _done(self, env: Any) -> None:
        if env is _END:
            return
        now = time.monotonic_ns()
        with self._lock:
            self.stats.in_flight -= 1
            if env.failure is not None:
                stage, reason = env.failure
                self.stats.failed[stage] = self.stats.failed.get(stage, 0) + 1
                if len(self.stats.failures) < 50:
                    self.stats.failures.append(f"frame {env.index} at {stage}: {reason}")
                return
            self.stats.done += 1
            self.stage_traces.append(env.trace)
            if env.received_ns:
                self.stats.latency_ns.append(now - env.received_ns)
            if not self.stats.first_done_ns:
                self.stats.first_done_ns = now
                log.info("first frame out after %.0f ms", (now - self.stats.started_ns) / 1e6)
            self.stats.last_done_ns = now


@dataclass(frozen=True)
class _SourceEnd:
    source: Any


def _check_wiring(stages: Sequence[Stage | Parallel], sinks: Sequence[Stage]) -> None:
    """Every type a stage takes is made upstream (the sync makes SyncedFrame; sinks take FrameResult)."""
    made: set[type] = {SyncedFrame}
    maybe: set[type] = set()                  # given by optional stages: only optional stages may take them
    names: set[str] = set()
    for st in [*stages, *sinks]:
        if st.name in names:
            raise ValueError(f"two stages named {st.name!r}")
        names.add(st.name)
    for st in stages:
        for s in (st.branches if isinstance(st, Parallel) else [st]):
            missing = [t.__name__ for t in s.takes if t not in made and not (s.optional and t in maybe)]
            if missing:
                raise ValueError(f"stage {s.name!r} takes {', '.join(missing)}, which no stage before it gives")
        if isinstance(st, Parallel):
            if st.gives is not None:
                if st.join is None:
                    raise ValueError(f"parallel stage {st.name!r} gives {st.gives.__name__} but has no join")
                made.add(st.gives)
        elif st.gives is not None and not st.optional:
            made.add(st.gives)
        elif st.gives is not None:
            maybe.add(st.gives)
    made.add(FrameResult)
    for s in sinks:
        if s.gives is not None or any(t is not FrameResult for t in s.takes):
            raise ValueError(f"sink {s.name!r} must take (FrameResult,) and give nothing")
    if sinks and not stages:
        raise ValueError("sinks need at least one stage before them (the graph makes the FrameResult there)")
    for st in stages:
        for s in (st.branches if isinstance(st, Parallel) else [st]):
            if s.lossy:
                raise ValueError(f"stage {s.name!r}: only sinks can be lossy")


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
    frames entered (branch threads finish in their own time; order is restored here), with the
    branches' outputs joined into the Parallel's ``gives``."""

    def __init__(self, par: Parallel, forward: Callable[[Any], None]) -> None:
        self.par = par
        self.branches = len(par.branches)
        self.forward = forward
        self._left: dict[int, int] = {}          # position -> branches still working
        self._ready: dict[int, Any] = {}         # position -> frame done by every branch, waiting its turn
        self._next = 0
        self._ends = 0
        self._lock = threading.Lock()

    def arrive(self, env: Any) -> None:
        with self._lock:                         # forwarding under the lock keeps the order
            if env is _END:
                self._ends += 1
                if self._ends == self.branches:
                    self.forward(_END)
                return
            pos = env.order[self.par.name]
            left = self._left.get(pos, self.branches) - 1
            if left:
                self._left[pos] = left
                return
            self._left.pop(pos, None)
            par = self.par
            if env.failure is None and par.gives is not None:
                parts = [env.parts.pop(f"{par.name}.{b.name}") for b in par.branches]
                value = par.join(parts)
                if not isinstance(value, par.gives):
                    raise TypeError(f"parallel stage {par.name} must give {par.gives.__name__}, its join gave "
                                    f"{type(value).__name__}")
                env.values[par.gives] = value
            self._ready[pos] = env
            while self._next in self._ready:
                self.forward(self._ready.pop(self._next))
                self._next += 1
