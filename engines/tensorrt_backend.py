"""TensorRT backend: runtime, builder and engine cache. Imported lazily; ``tensorrt`` and
``pycuda`` are imported inside the functions, with a clear message when either is missing.

Runtime (TensorRT 8.5 / JetPack 5 to 11), name-based API only: ``num_io_tensors``,
``get_tensor_name/mode/shape/dtype``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3`` (no bindings, no ``execute_v2``, no ``max_batch_size``).

CUDA with pycuda, never ``pycuda.autoinit``: the device's *primary* context is retained
once and pushed/popped around every call, in whichever thread makes it, so engines can be
used from worker threads (and share the context with other CUDA users of the process).
Pinned host buffers, async copies on a private stream, CUDA events for GPU time, and an
optional CUDA graph of enqueue for engines whose shapes are all static.

Builder, two paths chosen by the TensorRT version (``engine_cache.select_build_path``):
- ``legacy_flags`` (< 10.12): FP16 by builder flag; INT8 by an entropy calibrator with a
  calibration cache (or the INT8 flag alone for a Q/DQ ONNX); DLA core with GPU fallback.
- ``strongly_typed`` (>= 10.12, and 11 where the flags are gone): the network is created
  STRONGLY_TYPED from a precision-converted ONNX (Model Optimizer AutoCast for FP16, the
  Q/DQ ONNX of ``segfuse engines quantize`` for INT8).
Engines are cached under a key of everything they depend on (engine_cache.py), with a
JSON sidecar; a cached engine that fails to deserialise is rebuilt. The timing cache is
persisted. ``trt.init_libnvinfer_plugins`` runs before any deserialisation or parse
(RoiAlign is a plugin layer).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from engines import engine_cache as cache
from engines.base import Engine
from engines.contracts import META_KIND, TensorSpec, guess_kind, read_onnx_io
from pipeline.errors import EngineError

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_STATE: dict[str, Any] = {}          # the TensorRT logger and retained primary contexts, per process


# --- imports and CUDA context -----------------------------------------------------------

def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EngineError("the TensorRT backend needs the 'tensorrt' Python package (JetPack ships it; on x86 "
                          f"pip install tensorrt); it is not importable here: {exc}", field="backend") from exc
    with _LOCK:
        if "logger" not in _STATE:
            logger = trt.Logger(trt.Logger.WARNING)
            trt.init_libnvinfer_plugins(logger, "")       # before any deserialise or ONNX parse
            _STATE["logger"] = logger
    return trt


def trt_logger():
    import_tensorrt()
    return _STATE["logger"]


def import_pycuda():
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise EngineError("the TensorRT backend needs 'pycuda' (pip install pycuda, with the CUDA toolkit on the "
                          f"PATH); it is not importable here: {exc}", field="backend") from exc
    return cuda


class CudaContext:
    """The retained primary context of one device; ``with ctx.scope():`` pushes and pops it."""

    def __init__(self, device_id: int = 0):
        cuda = import_pycuda()
        with _LOCK:
            if not _STATE.get("cuda_init"):
                cuda.init()
                _STATE["cuda_init"] = True
            key = f"ctx{device_id}"
            if key not in _STATE:
                if device_id >= cuda.Device.count():
                    raise EngineError(f"no CUDA device {device_id} ({cuda.Device.count()} found)", field="device_id")
                dev = cuda.Device(device_id)
                _STATE[key] = (dev, dev.retain_primary_context())
        self.cuda = cuda
        self.device, self.context = _STATE[f"ctx{device_id}"]

    @contextmanager
    def scope(self) -> Iterator[None]:
        self.context.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def gpu(self) -> tuple[str, str]:
        major, minor = self.device.compute_capability()
        return self.device.name(), f"{major}.{minor}"


# --- runtime ------------------------------------------------------------------------------

def _dims(d) -> tuple[int, ...]:
    return tuple(int(x) for x in d)


class TensorRTEngine(Engine):
    backend = "tensorrt"

    def __init__(self, engine_path: str | Path, *, kind: str | None = None, device_id: int = 0,
                 dla_core: int | None = None, cuda_graph: bool = False, max_batch: int = 1,
                 precision: str = "fp32", metadata: dict[str, str] | None = None):
        trt = import_tensorrt()
        engine_path = Path(engine_path)
        self._ctx = CudaContext(device_id)
        cuda = self._ctx.cuda
        self._lock = threading.Lock()
        self._graph_exec = None
        self.last_gpu_ms: float | None = None
        with self._ctx.scope():
            runtime = trt.Runtime(trt_logger())
            if dla_core is not None:
                runtime.DLA_core = int(dla_core)
            try:
                engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
            except Exception as exc:          # some versions raise, others return None
                engine = None
                log.debug("deserialise raised: %s", exc)
            if engine is None:
                raise EngineError("TensorRT cannot deserialise this engine (built by another TensorRT version or "
                                  "for another GPU?)", path=engine_path)
            self._runtime, self._engine = runtime, engine
            self._context = engine.create_execution_context()
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
            dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
            shapes = {n: _dims(engine.get_tensor_shape(n)) for n in names}
            specs_in = [TensorSpec(n, tuple(d if d >= 0 else None for d in shapes[n]), dtypes[n].name)
                        for n in names if is_input[n]]
            specs_out = [TensorSpec(n, tuple(d if d >= 0 else None for d in shapes[n]), dtypes[n].name)
                         for n in names if not is_input[n]]
            # shapes to allocate for: the profile's max for dynamic inputs (capped by max_batch)
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
            self._host = {n: cuda.pagelocked_empty(int(np.prod(alloc[n])), dtypes[n]) for n in names}
            self._device = {n: cuda.mem_alloc(max(1, self._host[n].nbytes)) for n in names}
            for n in names:
                self._context.set_tensor_address(n, int(self._device[n]))
            self._stream = cuda.Stream()
            self._start, self._end = cuda.Event(), cuda.Event()
        self._names, self._is_input, self._dtypes, self._alloc = names, is_input, dtypes, alloc
        self._static = all(d >= 0 for n in names if is_input[n] for d in shapes[n])
        kind = kind or guess_kind(specs_out, metadata)
        if kind is None:
            raise EngineError("cannot tell the model kind; set kind: deeplab or maskrcnn", path=engine_path,
                              field="kind")
        super().__init__(engine_path, kind, specs_in, specs_out, metadata, precision)
        self._cur_shapes = {n: alloc[n] for n in names if is_input[n]}
        if cuda_graph:
            if self._static:
                self._capture_graph()
            else:
                log.warning("%s: CUDA graph skipped: the engine has dynamic input shapes", engine_path)

    def _capture_graph(self) -> None:
        with self._ctx.scope():
            try:
                self._context.execute_async_v3(self._stream.handle)     # settle lazy allocations first
                self._stream.synchronize()
                self._stream.begin_capture()
                self._context.execute_async_v3(self._stream.handle)
                graph = self._stream.end_capture()
                self._graph_exec = graph.instantiate()
            except Exception as exc:            # old pycuda without graph support, or capture refused
                self._graph_exec = None
                log.warning("%s: CUDA graph capture failed, running without it: %s", self.path, exc)

    def infer(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = self.check_batch(batch)
        cuda = self._ctx.cuda
        with self._lock, self._ctx.scope():
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
                cuda.memcpy_htod_async(self._device[n], host, self._stream)
            out_shapes = {n: _dims(self._context.get_tensor_shape(n)) for n in self.output_names}
            self._start.record(self._stream)
            if self._graph_exec is not None and not shapes_changed:
                self._graph_exec.launch(self._stream)
            elif not self._context.execute_async_v3(self._stream.handle):
                raise EngineError("execute_async_v3 failed", path=self.path)
            self._end.record(self._stream)
            for n in self.output_names:
                size = int(np.prod(out_shapes[n]))
                cuda.memcpy_dtoh_async(self._host[n][:size], self._device[n], self._stream)
            self._stream.synchronize()
            self.last_gpu_ms = self._end.time_since(self._start)
            return {n: self._host[n][:int(np.prod(out_shapes[n]))].reshape(out_shapes[n]).copy()
                    for n in self.output_names}

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(cuda_graph=self._graph_exec is not None, last_gpu_ms=self.last_gpu_ms)
        return d

    def close(self) -> None:
        if getattr(self, "_device", None) is None:
            return
        with self._ctx.scope():
            for mem in self._device.values():
                mem.free()
            self._device = None
            self._graph_exec = None
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


def make_calibrator(trt, cuda, batches: Iterator[np.ndarray], batch_size: int, cache_path: Path,
                    algorithm: str = "entropy"):
    """An INT8 calibrator (legacy path) feeding preprocessed [B,3,H,W] float32 batches."""
    base = trt.IInt8EntropyCalibrator2 if algorithm == "entropy" else trt.IInt8MinMaxCalibrator

    class Calibrator(base):
        def __init__(self):
            base.__init__(self)
            self.batches = batches
            self.device_mem = None

        def get_batch_size(self):
            return batch_size

        def get_batch(self, names):
            try:
                batch = np.ascontiguousarray(next(self.batches), dtype=np.float32)
            except StopIteration:
                return None
            if self.device_mem is None:
                self.device_mem = cuda.mem_alloc(batch.nbytes)
            cuda.memcpy_htod(self.device_mem, batch)
            return [int(self.device_mem)]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, data):
            cache_path.write_bytes(bytes(data))

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


def build_engine(onnx_path: str | Path, *, precision: str = "fp32", cache_dir: str | Path | None = None,
                 workspace_mb: int = 2048, dla_core: int | None = None, max_batch: int = 1, device_id: int = 0,
                 calibration: str | Path | None = None, calibration_frames: int = 500, force: bool = False,
                 kind: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Build (or find in the cache) the engine for ``onnx_path`` at ``precision``; returns its path and sidecar."""
    from engines.factory import default_cache_dir

    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    io = read_onnx_io(onnx_path)
    kind = kind or guess_kind(io.outputs, io.metadata)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    ctx = CudaContext(device_id)
    gpu_name, cc = ctx.gpu()
    path = cache.select_build_path(trt.__version__)
    qdq = _has_qdq(onnx_path)
    if precision == "int8" and path == "strongly_typed" and not qdq:
        raise EngineError("TensorRT >= 10.12 builds INT8 from a Q/DQ ONNX only: run `segfuse engines quantize` "
                          "and build that file", path=onnx_path, field="precision")
    if qdq and precision != "int8":
        raise EngineError("this ONNX has Q/DQ nodes: build it with --precision int8", path=onnx_path,
                          field="precision")
    if dla_core is not None and precision == "fp32":
        raise EngineError("DLA runs FP16 or INT8 only", field="precision")
    build_onnx = onnx_path
    if precision == "fp16" and path == "strongly_typed":
        from engines.quantize import autocast_fp16

        build_onnx = cache_dir / f"{onnx_path.stem}.{cache.sha256_file(onnx_path)[:16]}.fp16.onnx"
        if not build_onnx.is_file():
            log.info("AutoCast %s to FP16 for a strongly typed build", onnx_path.name)
            autocast_fp16(onnx_path, build_onnx)
    calib_cache = cache_dir / f"{onnx_path.stem}.{cache.sha256_file(onnx_path)[:16]}.calib"
    use_calibrator = precision == "int8" and path == "legacy_flags" and not qdq
    if use_calibrator and not calib_cache.is_file() and calibration is None:
        raise EngineError("an INT8 build with TensorRT < 10.12 calibrates: give calibration frames (a drive or "
                          "image folder), or quantize the ONNX first", field="calibration")
    key = cache.BuildKey(
        onnx_sha256=cache.sha256_file(onnx_path), precision=precision,
        shapes=_profile_shapes(io.inputs, max_batch), trt_version=trt.__version__, gpu_name=gpu_name,
        compute_capability=cc, dla_core=dla_core,
        calibration_sha256=cache.sha256_file(calib_cache) if use_calibrator and calib_cache.is_file() else None,
        build_path=path, extra={"workspace_mb": workspace_mb})
    engine_file, sidecar, hit = cache.lookup(cache_dir, onnx_path, key)
    if hit and not force:
        log.info("engine cache hit: %s", engine_file)
        return engine_file, cache.read_sidecar(sidecar) or {}
    t0 = time.perf_counter()
    with ctx.scope():
        builder = trt.Builder(trt_logger())
        network = builder.create_network(_network_flags(trt, path == "strongly_typed"))
        parser = trt.OnnxParser(network, trt_logger())
        if not parser.parse(build_onnx.read_bytes(), str(build_onnx)):
            errors = "; ".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"TensorRT's ONNX parser failed: {errors}", path=build_onnx)
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in key.shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        calibrator = None
        if path == "legacy_flags":
            if precision in ("fp16", "int8"):
                config.set_flag(trt.BuilderFlag.FP16)
            if precision == "int8":
                config.set_flag(trt.BuilderFlag.INT8)
                if use_calibrator:
                    calibrator = _legacy_calibrator(trt, ctx.cuda, io, calibration, calibration_frames, calib_cache)
                    config.int8_calibrator = calibrator
                    config.set_calibration_profile(profile)
        if dla_core is not None:
            if builder.num_DLA_cores <= dla_core:
                raise EngineError(f"DLA core {dla_core} asked for, this device has {builder.num_DLA_cores}",
                                  field="dla_core")
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = int(dla_core)
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        timing_path = cache.timing_cache_path(cache_dir, trt.__version__, gpu_name, cc)
        timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
        config.set_timing_cache(timing, False)
        log.info("building %s engine (%s path, TensorRT %s, %s sm%s)", precision, path, trt.__version__,
                 gpu_name, cc)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError("TensorRT failed to build the engine (see the TensorRT log above)", path=onnx_path)
        engine_file.write_bytes(bytes(plan))
        timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    if use_calibrator and calib_cache.is_file():
        # the key names the calibration cache that was used: rename to the final key
        key = dataclasses.replace(key, calibration_sha256=cache.sha256_file(calib_cache))
        final, final_sidecar = cache.engine_paths(cache_dir, onnx_path, cache.cache_key(key))
        engine_file.replace(final)
        engine_file, sidecar = final, final_sidecar
    seconds = time.perf_counter() - t0
    notes = {"kind": kind or "", "built_from": str(build_onnx)}
    cache.write_sidecar(sidecar, key, cache.cache_key(key), engine_file=engine_file, build_seconds=seconds,
                        notes=notes)
    log.info("built %s in %.0f s", engine_file, seconds)
    return engine_file, cache.read_sidecar(sidecar) or {}


def _legacy_calibrator(trt, cuda, io, calibration, calibration_frames: int, calib_cache: Path):
    from engines.frames import check_calibration_frames, iter_frames
    from pipeline.preprocess import resize_to_input

    if calib_cache.is_file():
        return make_calibrator(trt, cuda, iter(()), 1, calib_cache)
    h, w = io.inputs[0].shape[2], io.inputs[0].shape[3]
    frames = [resize_to_input(f, (h, w))[0] for f in iter_frames(calibration, limit=calibration_frames)]
    check_calibration_frames(frames, min_frames=min(calibration_frames, 500), source=calibration)
    batches = (np.ascontiguousarray(f.transpose(2, 0, 1)[None, ::-1], dtype=np.float32) for f in frames)
    return make_calibrator(trt, cuda, batches, 1, calib_cache)


def engine_from_config(config) -> TensorRTEngine:
    """The factory's TensorRT branch: build-or-load through the cache, rebuild once if a cached
    engine no longer deserialises."""
    model = Path(config.model)
    meta: dict[str, str] = {}
    if model.suffix == ".onnx":
        io = read_onnx_io(model)
        meta = io.metadata
        engine_file, sidecar = build_engine(model, precision=config.precision, cache_dir=config.cache_dir,
                                            workspace_mb=config.workspace_mb, dla_core=config.dla_core,
                                            max_batch=config.max_batch, device_id=config.device_id,
                                            calibration=config.calibration,
                                            calibration_frames=config.calibration_frames, kind=config.kind)
        try:
            return TensorRTEngine(engine_file, kind=config.kind or meta.get(META_KIND), device_id=config.device_id,
                                  dla_core=config.dla_core, cuda_graph=config.cuda_graph, max_batch=config.max_batch,
                                  precision=config.precision, metadata=meta)
        except EngineError as exc:
            log.warning("cached engine %s does not load (%s): rebuilding", engine_file, exc.message)
            engine_file, _ = build_engine(model, precision=config.precision, cache_dir=config.cache_dir,
                                          workspace_mb=config.workspace_mb, dla_core=config.dla_core,
                                          max_batch=config.max_batch, device_id=config.device_id,
                                          calibration=config.calibration,
                                          calibration_frames=config.calibration_frames, force=True, kind=config.kind)
    else:
        engine_file = model
        side = cache.read_sidecar(model.with_suffix(".json")) or {}
        meta = {META_KIND: side.get("notes", {}).get("kind", "")} if side else {}
    return TensorRTEngine(engine_file, kind=config.kind or meta.get(META_KIND) or None, device_id=config.device_id,
                          dla_core=config.dla_core, cuda_graph=config.cuda_graph, max_batch=config.max_batch,
                          precision=config.precision, metadata=meta)
