"""The CUDA runtime the TensorRT backend uses: NVIDIA's ``cuda-python`` (``cuda.bindings.runtime``,
the API NVIDIA's own TensorRT samples use), with pycuda only as a fallback.

``cuda.bindings`` imports without a GPU or driver; its calls then fail, and every failure here
is an EngineError that names the CUDA call and CUDA's own error string (for example
``cudaGetDeviceCount: cudaErrorInsufficientDriver (CUDA driver version is insufficient for
CUDA runtime version)``).

One small interface over both (``CudaRuntime``): device count and properties, versions,
``use(device)`` (the device's primary context, current in the calling thread, which is how the
runtime API lets engines be used from worker threads), pinned host buffers as numpy arrays,
device buffers, async copies, streams, events (GPU time), and stream capture into a CUDA graph
(``capture_graph``) with its launch. Stream capture exists only with cuda-python: pycuda has no
capture API (``begin_capture`` exists only in an unmerged branch), so under the fallback
``supports_graphs`` is False and ``cuda_graph: true`` says so at load instead of pretending.
"""
from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from pipeline.errors import EngineError

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_RUNTIME: dict[str, "CudaRuntime"] = {}


def _cuda_bindings():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:                                   # cuda-python < 12.6 spelled it cuda.cudart
            from cuda import cudart  # type: ignore[no-redef]
        except ImportError as exc:
            raise EngineError(f"cuda-python is not importable ({exc}); pip install cuda-python",
                              field="backend") from exc
    return cudart


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: str          # "8.7"
    total_memory_mb: int


@dataclass
class CapturedGraph:
    """An instantiated CUDA graph of one enqueue, and how many nodes it captured."""

    graph: Any
    exec: Any
    nodes: int


class CudaRuntime:
    """Base: what the TensorRT backend needs from CUDA. ``get_runtime()`` picks the implementation."""

    name = ""
    supports_graphs = False

    def device_count(self) -> int: raise NotImplementedError
    def device_info(self, index: int) -> DeviceInfo: raise NotImplementedError
    def versions(self) -> dict[str, str]: raise NotImplementedError
    def use(self, index: int) -> None: raise NotImplementedError
    def pinned_empty(self, count: int, dtype: np.dtype) -> np.ndarray: raise NotImplementedError
    def malloc(self, nbytes: int) -> Any: raise NotImplementedError
    def free(self, ptr: Any) -> None: raise NotImplementedError
    def free_pinned(self, arr: np.ndarray) -> None: raise NotImplementedError
    def ptr(self, mem: Any) -> int: raise NotImplementedError
    def htod_async(self, dst: Any, src: np.ndarray, stream: Any) -> None: raise NotImplementedError
    def dtoh_async(self, dst: np.ndarray, src: Any, stream: Any) -> None: raise NotImplementedError
    def htod(self, dst: Any, src: np.ndarray) -> None: raise NotImplementedError
    def stream(self) -> Any: raise NotImplementedError
    def stream_handle(self, stream: Any) -> int: raise NotImplementedError
    def synchronize(self, stream: Any) -> None: raise NotImplementedError
    def destroy_stream(self, stream: Any) -> None: pass
    def event(self) -> Any: raise NotImplementedError
    def record(self, event: Any, stream: Any) -> None: raise NotImplementedError
    def elapsed_ms(self, start: Any, end: Any) -> float: raise NotImplementedError

    def capture_graph(self, stream: Any, enqueue: Callable[[], None]) -> CapturedGraph:
        raise EngineError(f"CUDA graphs need cuda-python's stream capture; the {self.name} runtime has none",
                          field="cuda_graph")

    def launch_graph(self, graph: CapturedGraph, stream: Any) -> None:
        raise EngineError("no CUDA graph support", field="cuda_graph")

    def destroy_graph(self, graph: CapturedGraph) -> None:
        pass


# --- cuda-python ---------------------------------------------------------------------------

class CudaPythonRuntime(CudaRuntime):
    name = "cuda-python"
    supports_graphs = True

    def __init__(self):
        self.rt = _cuda_bindings()

    def _call(self, what: str, result):
        """cuda-python returns (err, *values): raise on err, return the values."""
        if not isinstance(result, tuple):
            result = (result,)
        err, values = result[0], result[1:]
        if int(err) != 0:
            name = getattr(err, "name", str(err))
            try:
                text = self.rt.cudaGetErrorString(err)[1].decode()
            except Exception:  # pragma: no cover - error string itself unavailable
                text = ""
            raise EngineError(f"{what}: {name}" + (f" ({text})" if text else ""), field="device")
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    def device_count(self) -> int:
        return int(self._call("cudaGetDeviceCount", self.rt.cudaGetDeviceCount()))

    def device_info(self, index: int) -> DeviceInfo:
        props = self._call("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties(index))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return DeviceInfo(index, name.rstrip("\x00").strip(), f"{props.major}.{props.minor}",
                          int(props.totalGlobalMem) >> 20)

    def versions(self) -> dict[str, str]:
        def fmt(v: int) -> str:
            return f"{v // 1000}.{(v % 1000) // 10}"
        out = {"cuda_runtime": fmt(int(self._call("cudaRuntimeGetVersion", self.rt.cudaRuntimeGetVersion())))}
        out["cuda_driver_api"] = fmt(int(self._call("cudaDriverGetVersion", self.rt.cudaDriverGetVersion())))
        try:
            import cuda.bindings

            out["cuda_python"] = str(getattr(cuda.bindings, "__version__", "?"))
        except ImportError:  # pragma: no cover
            pass
        return out

    def use(self, index: int) -> None:
        self._call("cudaSetDevice", self.rt.cudaSetDevice(int(index)))

    def pinned_empty(self, count: int, dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = max(1, int(count) * dtype.itemsize)
        ptr = self._call("cudaMallocHost", self.rt.cudaMallocHost(nbytes))
        buf = (ctypes.c_byte * nbytes).from_address(int(ptr))
        arr = np.frombuffer(buf, dtype=np.uint8, count=nbytes)[: int(count) * dtype.itemsize].view(dtype)
        return arr

    def free_pinned(self, arr: np.ndarray) -> None:
        base = arr
        while getattr(base, "base", None) is not None and isinstance(base.base, np.ndarray):
            base = base.base
        self._call("cudaFreeHost", self.rt.cudaFreeHost(base.ctypes.data))

    def malloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", self.rt.cudaMalloc(max(1, int(nbytes)))))

    def free(self, ptr: Any) -> None:
        self._call("cudaFree", self.rt.cudaFree(int(ptr)))

    def ptr(self, mem: Any) -> int:
        return int(mem)

    def htod_async(self, dst: Any, src: np.ndarray, stream: Any) -> None:
        self._call("cudaMemcpyAsync", self.rt.cudaMemcpyAsync(int(dst), src.ctypes.data, src.nbytes,
                                                              self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))

    def dtoh_async(self, dst: np.ndarray, src: Any, stream: Any) -> None:
        self._call("cudaMemcpyAsync", self.rt.cudaMemcpyAsync(dst.ctypes.data, int(src), dst.nbytes,
                                                              self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))

    def htod(self, dst: Any, src: np.ndarray) -> None:
        self._call("cudaMemcpy", self.rt.cudaMemcpy(int(dst), src.ctypes.data, src.nbytes,
                                                    self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice))

    def stream(self) -> Any:
        # non-blocking: capture is illegal on a stream that synchronises with the legacy default stream
        return self._call("cudaStreamCreateWithFlags",
                          self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking))

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def synchronize(self, stream: Any) -> None:
        self._call("cudaStreamSynchronize", self.rt.cudaStreamSynchronize(stream))

    def destroy_stream(self, stream: Any) -> None:
        self._call("cudaStreamDestroy", self.rt.cudaStreamDestroy(stream))

    def event(self) -> Any:
        return self._call("cudaEventCreate", self.rt.cudaEventCreate())

    def record(self, event: Any, stream: Any) -> None:
        self._call("cudaEventRecord", self.rt.cudaEventRecord(event, stream))

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._call("cudaEventElapsedTime", self.rt.cudaEventElapsedTime(start, end)))

    def capture_graph(self, stream: Any, enqueue: Callable[[], None]) -> CapturedGraph:
        rt = self.rt
        self._call("cudaStreamBeginCapture",
                   rt.cudaStreamBeginCapture(stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
        try:
            enqueue()
        except BaseException:
            graph = rt.cudaStreamEndCapture(stream)          # leave the stream usable
            if int(graph[0]) == 0 and graph[1] is not None:
                rt.cudaGraphDestroy(graph[1])
            raise
        graph = self._call("cudaStreamEndCapture", rt.cudaStreamEndCapture(stream))
        nodes = self._call("cudaGraphGetNodes", rt.cudaGraphGetNodes(graph, 0))
        count = int(nodes[1]) if isinstance(nodes, tuple) else len(nodes or [])
        exec_ = self._call("cudaGraphInstantiate", rt.cudaGraphInstantiate(graph, 0))
        return CapturedGraph(graph, exec_, count)

    def launch_graph(self, graph: CapturedGraph, stream: Any) -> None:
        self._call("cudaGraphLaunch", self.rt.cudaGraphLaunch(graph.exec, stream))

    def destroy_graph(self, graph: CapturedGraph) -> None:
        self._call("cudaGraphExecDestroy", self.rt.cudaGraphExecDestroy(graph.exec))
        self._call("cudaGraphDestroy", self.rt.cudaGraphDestroy(graph.graph))


# --- pycuda fallback ----------------------------------------------------------------------

class PyCudaRuntime(CudaRuntime):
    """pycuda without ``autoinit``: each device's primary context is retained once and made
    current in the calling thread by ``use`` (pushed if it is not already on top)."""

    name = "pycuda"
    supports_graphs = False

    def __init__(self):
        try:
            import pycuda.driver as cuda
        except ImportError as exc:
            raise EngineError(f"pycuda is not importable ({exc})", field="backend") from exc
        self.cuda = cuda
        self._contexts: dict[int, Any] = {}
        self._local = threading.local()          # per thread: the device whose context it pushed
        try:
            cuda.init()
        except Exception as exc:
            raise EngineError(f"pycuda: cuInit failed: {exc}", field="device") from exc

    def device_count(self) -> int:
        return int(self.cuda.Device.count())

    def device_info(self, index: int) -> DeviceInfo:
        dev = self.cuda.Device(index)
        major, minor = dev.compute_capability()
        return DeviceInfo(index, dev.name(), f"{major}.{minor}", int(dev.total_memory()) >> 20)

    def versions(self) -> dict[str, str]:
        v = self.cuda.get_driver_version()
        import pycuda

        return {"cuda_driver_api": f"{v // 1000}.{(v % 1000) // 10}", "pycuda": pycuda.VERSION_TEXT}

    def use(self, index: int) -> None:
        with _LOCK:
            if index not in self._contexts:
                self._contexts[index] = self.cuda.Device(index).retain_primary_context()
        if getattr(self._local, "device", None) == index:
            return
        if getattr(self._local, "device", None) is not None:
            self.cuda.Context.pop()
        self._contexts[index].push()      # stays current in this thread (the shared primary context)
        self._local.device = index

    def pinned_empty(self, count: int, dtype: np.dtype) -> np.ndarray:
        return self.cuda.pagelocked_empty(int(count), np.dtype(dtype))

    def free_pinned(self, arr: np.ndarray) -> None:
        base = getattr(arr, "base", None)
        if hasattr(base, "free"):
            base.free()

    def malloc(self, nbytes: int) -> Any:
        return self.cuda.mem_alloc(max(1, int(nbytes)))

    def free(self, ptr: Any) -> None:
        ptr.free()

    def ptr(self, mem: Any) -> int:
        return int(mem)

    def htod_async(self, dst: Any, src: np.ndarray, stream: Any) -> None:
        self.cuda.memcpy_htod_async(dst, src, stream)

    def dtoh_async(self, dst: np.ndarray, src: Any, stream: Any) -> None:
        self.cuda.memcpy_dtoh_async(dst, src, stream)

    def htod(self, dst: Any, src: np.ndarray) -> None:
        self.cuda.memcpy_htod(dst, src)

    def stream(self) -> Any:
        return self.cuda.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def event(self) -> Any:
        return self.cuda.Event()

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(end.time_since(start))


def get_runtime(prefer: str | None = None) -> CudaRuntime:
    """cuda-python when importable, else pycuda; ``prefer`` ("cuda-python" | "pycuda") forces one.
    Raises EngineError naming both when neither imports."""
    order = [prefer] if prefer else ["cuda-python", "pycuda"]
    errors = []
    for name in order:
        with _LOCK:
            if name in _RUNTIME:
                return _RUNTIME[name]
        try:
            rt: CudaRuntime = CudaPythonRuntime() if name == "cuda-python" else PyCudaRuntime()
        except EngineError as exc:
            errors.append(f"{name}: {exc.message}")
            continue
        with _LOCK:
            _RUNTIME.setdefault(name, rt)
            return _RUNTIME[name]
    raise EngineError("no CUDA runtime for the TensorRT backend: " + "; ".join(errors) +
                      " (pip install cuda-python)", field="backend")


def gpu_unavailable_reason(device_id: int = 0) -> str | None:
    """None if CUDA device ``device_id`` can be used, else one line saying why not."""
    try:
        rt = get_runtime()
        n = rt.device_count()
    except EngineError as exc:
        return exc.message
    if n <= device_id:
        return f"no CUDA device {device_id} ({n} found)"
    return None
