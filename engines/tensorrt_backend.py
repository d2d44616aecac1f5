"""TensorRT backend: runtime, builder and engine cache. Imported lazily; ``tensorrt`` and the CUDA
runtime are imported inside the functions, with a clear message when either is missing.

Runtime (TensorRT 8.5 / JetPack 5 to 11), name-based API only: ``num_io_tensors``,
``get_tensor_name/mode/shape/dtype``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3`` (no bindings, no ``execute_v2``, no ``max_batch_size``).

CUDA through NVIDIA's cuda-python (``engines.cuda_runtime``; pycuda only as a fallback): the
runtime API's ``cudaSetDevice`` makes the device's primary context current in whichever thread
calls, so engines can be used from worker threads and share the context with other CUDA users
of the process. Pinned host buffers, async copies on a private non-blocking stream, CUDA events
for GPU time, and for ``cuda_graph: true`` one enqueue captured into a CUDA graph by stream
capture and replayed with ``cudaGraphLaunch`` (static shapes only; under pycuda, which has no
capture API, the load says so and runs without).

Builder, two paths chosen by the TensorRT version (``engine_cache.select_build_path``):
- ``legacy_flags`` (< 10.12): FP16 by builder flag; INT8 by an entropy calibrator with a
  keyed calibration cache (or the INT8 flag alone for a Q/DQ ONNX); DLA core with GPU fallback.
  The layers that must not run in reduced precision (box decoding, NMS, RoiAlign, level
  assignment, softmax/argmax: ``quantize.fp32_only_patterns``; for INT8 also what the Q/DQ
  quantizer keeps: ``quantize.higher_precision_nodes``) get precision constraints and
  ``OBEY_PRECISION_CONSTRAINTS``. On TensorRT 8.x a graph with opset-18 Reduce* nodes is
  lowered to opset 17 first (``onnx_compat``: the 8.5/8.6 parsers ignore the axes input).
- ``strongly_typed`` (>= 10.12, and 11 where the flags are gone): the network is created
  STRONGLY_TYPED from a precision-converted ONNX (Model Optimizer AutoCast for FP16, calibrated
  on real frames and restricted to backbone and heads; the Q/DQ ONNX of ``segfuse engines
  quantize`` for INT8).
FP32 builds clear the TF32 flag (TensorRT enables TF32 by default on Ampere and newer, which
FP32 tolerances would then judge). Engines are cached under a key of everything they depend on
(engine_cache.py), with a JSON sidecar, written atomically under a per-key file lock; only a
cached engine that does not deserialise is rebuilt (any other load error is raised). The timing
cache is persisted. ``trt.init_libnvinfer_plugins`` runs before any deserialisation or parse
(RoiAlign is a plugin layer).
"""
from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from engines import engine_cache as cache
from engines.base import Engine
from engines.contracts import META_KIND, TensorSpec, guess_kind, read_onnx_io
from engines.cuda_runtime import CapturedGraph, CudaRuntime, get_runtime
from pipeline.errors import EngineError

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_STATE: dict[str, Any] = {}          # the TensorRT logger, per process


class EngineDeserializeError(EngineError):
    """The plan does not deserialise (another TensorRT version or GPU, or a damaged file): the
    one load failure a rebuild can fix."""


# --- imports ------------------------------------------------------------------------------

def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EngineError("the TensorRT backend needs the 'tensorrt' Python package (JetPack ships it as an apt "
                          "package: make the venv with --system-site-packages on Jetson; on x86 pip install "
                          f"tensorrt); it is not importable here: {exc}", field="backend") from exc
    with _LOCK:
        if "logger" not in _STATE:
            logger = trt.Logger(trt.Logger.WARNING)
            trt.init_libnvinfer_plugins(logger, "")       # before any deserialise or ONNX parse
            _STATE["logger"] = logger
    return trt


def trt_logger():
    import_tensorrt()
    return _STATE["logger"]


def unavailable_reason(device_id: int = 0) -> str | None:
    """None if TensorRT and CUDA device ``device_id`` are usable here, else why not (one line)."""
    from engines.cuda_runtime import gpu_unavailable_reason

    try:
        import_tensorrt()
    except EngineError as exc:
        return exc.message
    return gpu_unavailable_reason(device_id)


def load_or_rebuild(build: Callable[[bool], Path], load: Callable[[Path], Engine]) -> Engine:
    """Build (or find) the engine, load it; rebuild once only if the plan does not deserialise
    (EngineDeserializeError). Any other EngineError at load (a contract mismatch, a shape
    outside the profile) is raised: a rebuild of the same ONNX would fail the same way."""
    engine_file = build(False)
    try:
        return load(engine_file)
    except EngineDeserializeError as exc:
        log.warning("cached engine %s does not deserialise (%s): rebuilding", engine_file, exc.message)
    return load(build(True))


# --- runtime ------------------------------------------------------------------------------

def _dims(d) -> tuple[int, ...]:
    return tuple(int(x) for x in d)


class TensorRTEngine(Engine):
    backend = "tensorrt"

    def __init__(self, engine_path: str | Path, *, kind: str | None = None, device_id: int = 0,
                 dla_core: int | None = None, cuda_graph: bool = False, max_batch: int = 1,
                 precision: str | None = None, metadata: dict[str, str] | None = None,
                 runtime: CudaRuntime | None = None):
        trt = import_tensorrt()
        engine_path = Path(engine_path)
        self._rt = rt = runtime or get_runtime()
        self._device_id = int(device_id)
        self._lock = threading.Lock()
        self._graph: CapturedGraph | None = None
        self.graph_status = "off"
        self.last_gpu_ms: float | None = None
        self._device: dict[str, Any] | None = None
        if precision is None:              # an engine file loaded directly: its sidecar says what it is
            side = cache.read_sidecar(engine_path.with_suffix(".json")) or {}
            precision = (side.get("inputs") or {}).get("precision") or "unknown"
        rt.use(self._device_id)
        tr = trt.Runtime(trt_logger())
        if dla_core is not None:
            tr.DLA_core = int(dla_core)
        try:
            engine = tr.deserialize_cuda_engine(engine_path.read_bytes())
        except Exception as exc:          # some versions raise, others return None
            engine = None
            log.debug("deserialise raised: %s", exc)
        if engine is None:
            raise EngineDeserializeError("TensorRT cannot deserialise this engine (built by another TensorRT "
                                         "version or for another GPU, or damaged)", path=engine_path)
        self._runtime, self._engine = tr, engine
        self._context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        shapes = {n: _dims(engine.get_tensor_shape(n)) for n in names}
        specs_in = [TensorSpec(n, tuple(d if d >= 0 else None for d in shapes[n]), dtypes[n].name)
                    for n in names if is_input[n]]
        specs_out = [TensorSpec(n, tuple(d if d >= 0 else None for d in shapes[n]), dtypes[n].name)
                     for n in names if not is_input[n]]
        alloc: dict[str, tuple[int, ...]] = {}
        for n in names:
            if is_input[n]:
                shape = shapes[n]
                if any(d < 0 for d in shape):
                    _, _, mx = engine.get_tensor_profile_shape(n, 0)
                    shape = tuple(min(int(m), max_batch) if i == 0 and shape[0] < 0 else int(m)
                                  for i, m in enumerate(mx))
                alloc[n] = shape
                if not self._context.set_input_shape(n, shape):
                    raise EngineError(f"cannot set input shape {shape}", path=engine_path, field=f"inputs.{n}")
        for n in names:
            if not is_input[n]:
                alloc[n] = _dims(self._context.get_tensor_shape(n))
                if any(d < 0 for d in alloc[n]):
                    raise EngineError("output shape depends on the data (the contract needs static outputs)",
                                      path=engine_path, field=f"outputs.{n}")
        self._host = {n: rt.pinned_empty(int(np.prod(alloc[n])), dtypes[n]) for n in names}
        self._device = {n: rt.malloc(self._host[n].nbytes) for n in names}
        for n in names:
            self._context.set_tensor_address(n, rt.ptr(self._device[n]))
        self._stream = rt.stream()
        self._start, self._end = rt.event(), rt.event()
        self._names, self._is_input, self._dtypes, self._alloc = names, is_input, dtypes, alloc
        self._static = all(d >= 0 for n in names if is_input[n] for d in shapes[n])
        kind = kind or guess_kind(specs_out, metadata)
        if kind is None:
            raise EngineError("cannot tell the model kind; set kind: deeplab or maskrcnn", path=engine_path,
                              field="kind")
        super().__init__(engine_path, kind, specs_in, specs_out, metadata, precision)
        self._cur_shapes = {n: alloc[n] for n in names if is_input[n]}
        if cuda_graph:
            self._capture_graph()

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._rt.stream_handle(self._stream)):
            raise EngineError("execute_async_v3 failed", path=self.path)

    def _capture_graph(self) -> None:
        if not self._static:
            self.graph_status = "skipped: dynamic input shapes"
        elif not self._rt.supports_graphs:
            self.graph_status = f"unavailable: the {self._rt.name} runtime has no stream capture (install cuda-python)"
        else:
            self._rt.use(self._device_id)
            try:
                self._enqueue()                              # settle TensorRT's lazy allocations first
                self._rt.synchronize(self._stream)
                self._graph = self._rt.capture_graph(self._stream, self._enqueue)
                self.graph_status = f"captured ({self._graph.nodes} nodes)"
            except EngineError as exc:
                self._graph = None
                self.graph_status = f"capture failed: {exc.message}"
        if self._graph is None:
            log.warning("%s: cuda_graph: true, but running without a CUDA graph: %s", self.path, self.graph_status)

    @property
    def cuda_graph(self) -> bool:
        """True when inference replays a captured CUDA graph."""
        return self._graph is not None

    def infer(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = self.check_batch(batch)
        rt = self._rt
        with self._lock:
            if self._device is None:
                raise EngineError("the engine is closed", path=self.path)
            rt.use(self._device_id)
            shapes_changed = False
            for n, arr in feed.items():
                if arr.shape != self._cur_shapes[n]:
                    if arr.size > self._host[n].size:
                        raise EngineError(f"batch {list(arr.shape)} exceeds the allocated {list(self._alloc[n])} "
                                          "(raise max_batch)", path=self.path, field=f"inputs.{n}")
                    if not self._context.set_input_shape(n, arr.shape):
                        raise EngineError(f"shape {list(arr.shape)} outside the engine's profile", path=self.path,
                                          field=f"inputs.{n}")
                    self._cur_shapes[n] = arr.shape
                    shapes_changed = True
                host = self._host[n][:arr.size]
                host[:] = arr.ravel()
                rt.htod_async(self._device[n], host, self._stream)
            out_shapes = {n: _dims(self._context.get_tensor_shape(n)) for n in self.output_names}
            rt.record(self._start, self._stream)
            if self._graph is not None and not shapes_changed:
                rt.launch_graph(self._graph, self._stream)
            else:
                self._enqueue()
            rt.record(self._end, self._stream)
            for n in self.output_names:
                size = int(np.prod(out_shapes[n]))
                rt.dtoh_async(self._host[n][:size], self._device[n], self._stream)
            rt.synchronize(self._stream)
            self.last_gpu_ms = rt.elapsed_ms(self._start, self._end)
            return {n: self._host[n][:int(np.prod(out_shapes[n]))].reshape(out_shapes[n]).copy()
                    for n in self.output_names}

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(cuda_graph=self.cuda_graph, cuda_graph_status=self.graph_status, cuda_runtime=self._rt.name,
                 last_gpu_ms=self.last_gpu_ms)
        return d

    def close(self) -> None:
        with self._lock:                      # never free buffers under a running infer
            if getattr(self, "_device", None) is None:
                return
            rt = self._rt
            rt.use(self._device_id)
            if self._graph is not None:
                rt.destroy_graph(self._graph)
                self._graph = None
            for mem in self._device.values():
                rt.free(mem)
            for arr in self._host.values():
                rt.free_pinned(arr)
            rt.destroy_stream(self._stream)
            self._device = None
            self._host = {}
            self._context = None
            self._engine = None


# --- builder ------------------------------------------------------------------------------

def _network_flags(trt, strongly_typed: bool) -> int:
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None and cache.parse_version(trt.__version__)[0] < 10:
        flags |= 1 << int(explicit)            # implicit batch is gone from 10 on (the flag is deprecated)
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


CALIBRATION_ALGORITHMS = ("entropy", "minmax")


def make_calibrator(trt, rt: CudaRuntime, batches: Callable[[], Iterator[np.ndarray]], batch_size: int,
                    cache_path: Path, algorithm: str = "entropy"):
    """An INT8 calibrator (legacy path) feeding preprocessed [B,3,H,W] float32 batches.
    ``batches`` is called only if TensorRT asks for data (it reads a valid cache instead), so a
    cache TensorRT rejects is recalibrated from the real frames, never from an empty iterator."""
    if algorithm not in CALIBRATION_ALGORITHMS:
        raise EngineError(f"calibration algorithm must be one of {', '.join(CALIBRATION_ALGORITHMS)}",
                          field="calibration_algorithm")
    base = trt.IInt8EntropyCalibrator2 if algorithm == "entropy" else trt.IInt8MinMaxCalibrator

    class Calibrator(base):
        def __init__(self):
            base.__init__(self)
            self.batches: Iterator[np.ndarray] | None = None
            self.device_mem = None
            self.count = 0

        def get_batch_size(self):
            return batch_size

        def get_batch(self, names):
            if self.batches is None:
                self.batches = iter(batches())
            try:
                batch = np.ascontiguousarray(next(self.batches), dtype=np.float32)
            except StopIteration:
                if self.count == 0:
                    raise EngineError("INT8 calibration got no frames", field="calibration")
                return None
            if self.device_mem is None:
                self.device_mem = rt.malloc(batch.nbytes)
            rt.htod(self.device_mem, batch)
            self.count += 1
            return [rt.ptr(self.device_mem)]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, data):
            cache.atomic_write_bytes(cache_path, bytes(data))

    return Calibrator()


def _profile_shapes(inputs: Sequence[TensorSpec], max_batch: int) -> dict[str, list[list[int]]]:
    shapes = {}
    for s in inputs:
        lo = [d if d is not None else 1 for d in s.shape]
        hi = [d if d is not None else max_batch for d in s.shape]
        shapes[s.name] = [lo, lo, hi]
    return shapes


def _parser_error(err) -> str:
    desc = getattr(err, "desc", None)
    text = desc() if callable(desc) else str(err)
    node = getattr(err, "node", None)
    return f"node {node()}: {text}" if callable(node) and node() >= 0 else text


def _has_qdq(onnx_path: Path) -> bool:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def reduced_precision_exclusions(onnx_path: Path, kind: str | None, precision: str) -> list[str]:
    """Regular expressions (``re.match``) of the layers a legacy-flags build keeps in FP32: what the
    strongly typed path keeps out of FP16 (outside backbone and heads), and for INT8 also what
    ``engines quantize`` keeps unquantized (ARCH_KEEP, first conv, classifier, mask head)."""
    import onnx

    from engines.quantize import fp32_only_patterns, higher_precision_nodes

    pats = list(fp32_only_patterns(kind))
    if precision == "int8":
        model = onnx.load(str(onnx_path), load_external_data=False)
        for names in higher_precision_nodes(model, kind).values():
            pats += [f"^{re.escape(n)}($|[^A-Za-z0-9_./])" for n in names]
    return pats


def constrain_layer_precisions(trt, network, patterns: Sequence[str]) -> int:
    """Pin the layers whose names match ``patterns`` to FP32 (precision and output types);
    returns how many. The parser names each layer after its ONNX node (sometimes with a suffix)."""
    rx = [re.compile(p) for p in patterns]
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not any(r.match(layer.name) for r in rx):
            continue
        float_out = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in (trt.float32, trt.float16)]
        if layer.type in (trt.LayerType.CONSTANT, trt.LayerType.SHAPE, trt.LayerType.IDENTITY) or not float_out:
            continue
        layer.precision = trt.float32
        for j in float_out:
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def make_builder_config(trt, builder, network, *, precision: str, build_path: str, workspace_mb: int,
                        shapes: dict[str, list[list[int]]], dla_core: int | None = None,
                        fp32_patterns: Sequence[str] = ()):
    """The IBuilderConfig for one build: workspace, profile, precision flags (legacy path), TF32
    cleared for FP32, precision constraints, DLA."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if precision == "fp32" and tf32 is not None:
        config.clear_flag(tf32)             # on by default: FP32 engines would run TF32 matmuls/convolutions
    if build_path == "legacy_flags":
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        if precision in ("fp16", "int8") and fp32_patterns:
            pinned = constrain_layer_precisions(trt, network, fp32_patterns)
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            log.info("%d layers pinned to FP32 (box decoding, NMS, RoiAlign, softmax/argmax, kept layers)", pinned)
    if dla_core is not None:
        if builder.num_DLA_cores <= dla_core:
            raise EngineError(f"DLA core {dla_core} asked for, this device has {builder.num_DLA_cores}",
                              field="dla_core")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    return config, profile


def _autocast_onnx(onnx_path: Path, cache_dir: Path, onnx_sha: str, calibration: str | Path | None,
                   frames: int) -> Path:
    """The AutoCast FP16 ONNX of the strongly typed path, cached by ONNX, calibration source and
    frame count, made once under a lock and written atomically."""
    from engines.frames import iter_frames
    from engines.quantize import DEFAULT_AUTOCAST_FRAMES, autocast_fp16

    if calibration is None:
        raise EngineError("an FP16 build with TensorRT >= 10.12 casts the ONNX with AutoCast, which judges "
                          "value ranges on real frames: set calibration: to a drive or image folder",
                          path=onnx_path, field="calibration")
    n = min(int(frames), DEFAULT_AUTOCAST_FRAMES)
    ident = cache.calibration_cache_path(cache_dir, onnx_path, onnx_sha256=onnx_sha, trt_version="autocast",
                                         source=calibration, frames=n, algorithm="autocast")
    out = ident.with_suffix(".fp16.onnx")
    with cache.build_lock(out.with_suffix(".lock")):
        if not out.is_file():
            log.info("AutoCast %s to FP16 on %d frames of %s", onnx_path.name, n, calibration)
            autocast_fp16(onnx_path, out, iter_frames(calibration, limit=n), max_frames=n, source=calibration)
    return out


def _opset17_onnx(onnx_path: Path, cache_dir: Path, onnx_sha: str) -> Path:
    """For TensorRT 8.x: the graph at opset 17 when it has Reduce* nodes with axes inputs."""
    import onnx

    from engines.onnx_compat import lower_opset_file, reduce_nodes_with_axes_input

    nodes = reduce_nodes_with_axes_input(onnx.load(str(onnx_path), load_external_data=False))
    if not nodes:
        return onnx_path
    out = cache_dir / f"{onnx_path.stem}.{onnx_sha[:16]}.opset17.onnx"
    with cache.build_lock(out.with_suffix(".lock")):
        if not out.is_file():
            log.info("%s: %s take axes as an input (opset >= 18), which TensorRT 8.x's parser ignores: building "
                     "from an opset-17 rewrite", onnx_path.name, ", ".join(nodes))
            lower_opset_file(onnx_path, out)
    return out


def build_engine(onnx_path: str | Path, *, precision: str = "fp32", cache_dir: str | Path | None = None,
                 workspace_mb: int = 2048, dla_core: int | None = None, max_batch: int = 1, device_id: int = 0,
                 calibration: str | Path | None = None, calibration_frames: int = 500, force: bool = False,
                 kind: str | None = None, calibration_algorithm: str = "entropy") -> tuple[Path, dict[str, Any]]:
    """Build (or find in the cache) the engine for ``onnx_path`` at ``precision``; returns its path and sidecar."""
    from engines.factory import default_cache_dir

    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    io = read_onnx_io(onnx_path)
    kind = kind or guess_kind(io.outputs, io.metadata)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    rt = get_runtime()
    rt.use(device_id)
    dev = rt.device_info(device_id)
    gpu_name, cc = dev.name, dev.compute_capability
    path = cache.select_build_path(trt.__version__)
    trt_major = cache.parse_version(trt.__version__)[0]
    qdq = _has_qdq(onnx_path)
    if precision == "int8" and path == "strongly_typed" and not qdq:
        raise EngineError("TensorRT >= 10.12 builds INT8 from a Q/DQ ONNX only: run `segfuse engines quantize` "
                          "and build that file", path=onnx_path, field="precision")
    if qdq and precision != "int8":
        raise EngineError("this ONNX has Q/DQ nodes: build it with --precision int8", path=onnx_path,
                          field="precision")
    if dla_core is not None and precision == "fp32":
        raise EngineError("DLA runs FP16 or INT8 only", field="precision")
    if dla_core is not None and cache.dla_unsupported_reason(trt.__version__):
        raise EngineError(cache.dla_unsupported_reason(trt.__version__), field="dla_core")
    onnx_sha = cache.sha256_file(onnx_path)
    build_onnx = onnx_path
    if precision == "fp16" and path == "strongly_typed":
        build_onnx = _autocast_onnx(onnx_path, cache_dir, onnx_sha, calibration, calibration_frames)
    if trt_major < 10:
        build_onnx = _opset17_onnx(build_onnx, cache_dir, cache.sha256_file(build_onnx))
    use_calibrator = precision == "int8" and path == "legacy_flags" and not qdq
    calib_cache = None
    if use_calibrator:
        if calibration is None:
            raise EngineError("an INT8 build with TensorRT < 10.12 calibrates: give calibration frames (a drive or "
                              "image folder), or quantize the ONNX first", field="calibration")
        calib_cache = cache.calibration_cache_path(cache_dir, onnx_path, onnx_sha256=onnx_sha,
                                                   trt_version=trt.__version__, source=calibration,
                                                   frames=calibration_frames, algorithm=calibration_algorithm)
    key = cache.BuildKey(
        onnx_sha256=onnx_sha, precision=precision,
        shapes=_profile_shapes(io.inputs, max_batch), trt_version=trt.__version__, gpu_name=gpu_name,
        compute_capability=cc, dla_core=dla_core,
        calibration_sha256=calib_cache.name if calib_cache else None,
        build_path=path, extra={"workspace_mb": workspace_mb, "built_from_sha256": cache.sha256_file(build_onnx),
                                "tf32": False if precision == "fp32" else None})

    def build() -> tuple[bytes, dict[str, Any]]:
        rt.use(device_id)
        builder = trt.Builder(trt_logger())
        network = builder.create_network(_network_flags(trt, path == "strongly_typed"))
        parser = trt.OnnxParser(network, trt_logger())
        if not parser.parse(build_onnx.read_bytes(), str(build_onnx)):
            errors = "; ".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"TensorRT's ONNX parser failed: {errors}", path=build_onnx)
        fp32_patterns = reduced_precision_exclusions(onnx_path, kind, precision) \
            if path == "legacy_flags" and precision != "fp32" and not qdq else []
        config, profile = make_builder_config(trt, builder, network, precision=precision, build_path=path,
                                              workspace_mb=workspace_mb, shapes=key.shapes, dla_core=dla_core,
                                              fp32_patterns=fp32_patterns)
        if use_calibrator:
            config.int8_calibrator = make_calibrator(
                trt, rt, lambda: _calibration_batches(io, calibration, calibration_frames), 1, calib_cache,
                calibration_algorithm)
            config.set_calibration_profile(profile)
        timing_path = cache.timing_cache_path(cache_dir, trt.__version__, gpu_name, cc)
        timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
        config.set_timing_cache(timing, False)
        log.info("building %s engine (%s path, TensorRT %s, %s sm%s)", precision, path, trt.__version__,
                 gpu_name, cc)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError("TensorRT failed to build the engine (see the TensorRT log above)", path=onnx_path)
        cache.atomic_write_bytes(timing_path, bytes(config.get_timing_cache().serialize()))
        return bytes(plan), {"kind": kind or "", "built_from": str(build_onnx),
                             "calibration_cache": str(calib_cache) if calib_cache else None}

    engine_file, sidecar, built = cache.build_once(cache_dir, onnx_path, key, build, force=force)
    log.info("%s %s", "built" if built else "engine cache hit:", engine_file)
    return engine_file, sidecar


def _calibration_batches(io, calibration, calibration_frames: int) -> Iterator[np.ndarray]:
    from engines.frames import check_calibration_frames, iter_frames
    from pipeline.preprocess import resize_to_input

    h, w = io.inputs[0].shape[2], io.inputs[0].shape[3]
    frames = [resize_to_input(f, (h, w))[0] for f in iter_frames(calibration, limit=calibration_frames)]
    check_calibration_frames(frames, min_frames=min(calibration_frames, 500), source=calibration)
    return (np.ascontiguousarray(f.transpose(2, 0, 1)[None, ::-1], dtype=np.float32) for f in frames)


def engine_from_config(config) -> TensorRTEngine:
    """The factory's TensorRT branch: build-or-load through the cache; rebuild once only if a
    cached engine does not deserialise."""
    model = Path(config.model)
    if model.suffix == ".onnx":
        meta = read_onnx_io(model).metadata

        def build(force: bool) -> Path:
            return build_engine(model, precision=config.precision, cache_dir=config.cache_dir,
                                workspace_mb=config.workspace_mb, dla_core=config.dla_core,
                                max_batch=config.max_batch, device_id=config.device_id,
                                calibration=config.calibration, calibration_frames=config.calibration_frames,
                                force=force, kind=config.kind)[0]

        def load(engine_file: Path) -> TensorRTEngine:
            return TensorRTEngine(engine_file, kind=config.kind or meta.get(META_KIND), device_id=config.device_id,
                                  dla_core=config.dla_core, cuda_graph=config.cuda_graph,
                                  max_batch=config.max_batch, precision=config.precision, metadata=meta)

        return load_or_rebuild(build, load)
    side = cache.read_sidecar(model.with_suffix(".json")) or {}
    meta = {META_KIND: side.get("notes", {}).get("kind", "")} if side else {}
    built_as = (side.get("inputs") or {}).get("precision")
    if built_as and config.precision != built_as:
        log.warning("%s: the config says precision %s, the engine's sidecar says it was built %s: reporting %s",
                    model, config.precision, built_as, built_as)
    return TensorRTEngine(model, kind=config.kind or meta.get(META_KIND) or None, device_id=config.device_id,
                          dla_core=config.dla_core, cuda_graph=config.cuda_graph, max_batch=config.max_batch,
                          precision=built_as or config.precision, metadata=meta)
