"""Machine info and system sampling, on the same clock as the FrameTraces (``time.monotonic_ns``).

Each source is optional and lazily imported; what is absent is recorded as a reason, not an
error: psutil (CPU % per core, process RSS, system memory), NVML (``pynvml`` from
nvidia-ml-py: GPU utilisation and memory), ``tegrastats`` (Jetson: RAM, per-core CPU,
GR3D_FREQ, EMC, temperatures, power rails), ``nvpmodel -q`` and ``jetson_clocks --show``.
"""
from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NOT_A_JETSON = "not a Jetson"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").replace("\x00", "").strip()
    except OSError:
        return None


def _cmd(args: list[str], timeout: float = 5.0) -> str:
    if shutil.which(args[0]) is None:
        return f"unavailable ({args[0]} not found)"
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (r.stdout or r.stderr).strip()
    return text if r.returncode == 0 else f"unavailable (exit {r.returncode}: {text[:200]})"


def cpu_model() -> str:
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Hardware", "Model"):
        for line in text.splitlines():
            if line.startswith(key) and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def jetson_info() -> dict[str, Any] | str:
    """Model, L4T release, nvpmodel mode and jetson_clocks state; NOT_A_JETSON elsewhere."""
    release = _read("/etc/nv_tegra_release")
    model = _read("/proc/device-tree/model")
    if release is None and shutil.which("tegrastats") is None and not (model and "jetson" in model.lower()):
        return NOT_A_JETSON
    return {"model": model, "l4t": release.splitlines()[0] if release else None,
            "nvpmodel": _cmd(["nvpmodel", "-q"]), "jetson_clocks": _cmd(["jetson_clocks", "--show"])}


def _nvml() -> Any:
    """The pynvml module, initialised, or a str saying why not."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return "NVML not available (pynvml / nvidia-ml-py not installed)"
    try:
        pynvml.nvmlInit()
    except Exception as exc:                          # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return f"NVML not available: {exc}"
    return pynvml


def gpu_info() -> list[dict[str, Any]] | str:
    nv = _nvml()
    if isinstance(nv, str):
        if jetson_info() != NOT_A_JETSON:
            return "Jetson integrated GPU (see tegrastats GR3D_FREQ)"
        return f"none ({nv})"
    out = []
    for i in range(nv.nvmlDeviceGetCount()):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        name = nv.nvmlDeviceGetName(h)
        out.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                    "memory_total_mb": nv.nvmlDeviceGetMemoryInfo(h).total / 2**20})
    return out or "none (NVML found no device)"


def machine_info() -> dict[str, Any]:
    try:
        import psutil
        physical = psutil.cpu_count(logical=False)
        mem_mb = psutil.virtual_memory().total / 2**20
    except ImportError:
        physical, mem_mb = None, None
    return {"cpu_model": cpu_model(), "cores_logical": os.cpu_count(), "cores_physical": physical,
            "memory_total_mb": mem_mb, "platform": platform.platform(), "python": platform.python_version(),
            "gpu": gpu_info(), "jetson": jetson_info(), "hostname": platform.node()}


class SystemSampler:
    """A thread sampling every ``interval_s``: CPU % per core, process RSS, system memory (psutil),
    GPU utilisation and memory (NVML), and the latest tegrastats line (a ``tegrastats`` process
    at the same interval). Each sample carries ``t_ns`` = ``time.monotonic_ns()``.

    ``sources`` says what was sampled and why the rest was not; ``cpu_s`` is the sampler
    thread's own CPU time (its cost)."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.samples: list[dict[str, Any]] = []
        self.sources: dict[str, str] = {}
        self.cpu_s = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._teg_proc: subprocess.Popen | None = None
        self._teg_thread: threading.Thread | None = None
        self._teg_last: dict[str, Any] | None = None
        self._teg_lines = 0

    def start(self) -> "SystemSampler":
        try:
            import psutil
            self._psutil = psutil
            self._proc = psutil.Process()
            psutil.cpu_percent(percpu=True)            # primes the per-core counters
            self.sources["cpu"] = "psutil"
        except ImportError:
            self._psutil = None
            self.sources["cpu"] = "unavailable (psutil not installed)"
        nv = _nvml()
        if isinstance(nv, str):
            self._nv, self._handles = None, []
            self.sources["gpu"] = nv
        else:
            self._nv = nv
            self._handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
            self.sources["gpu"] = f"NVML ({len(self._handles)} device(s))"
        if shutil.which("tegrastats"):
            self._start_tegrastats()
        else:
            self.sources["tegrastats"] = "unavailable (tegrastats not found: not a Jetson)"
        self._thread = threading.Thread(target=self._run, name="segfuse-profile-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._teg_proc is not None:
            self._teg_proc.terminate()
            try:
                self._teg_proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                self._teg_proc.kill()
            if self._teg_thread is not None:
                self._teg_thread.join(timeout=2.0)
            self.sources["tegrastats"] += f", {self._teg_lines} lines"

    def __enter__(self) -> "SystemSampler":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- tegrastats ---------------------------------------------------------------------
    def _start_tegrastats(self) -> None:
        ms = max(int(self.interval_s * 1000), 10)
        try:
            self._teg_proc = subprocess.Popen(["tegrastats", "--interval", str(ms)], stdout=subprocess.PIPE,
                                              stderr=subprocess.DEVNULL, text=True)
        except OSError as exc:
            self.sources["tegrastats"] = f"unavailable ({exc})"
            return
        self.sources["tegrastats"] = f"tegrastats --interval {ms}"
        self._teg_thread = threading.Thread(target=self._read_tegrastats, name="segfuse-tegrastats", daemon=True)
        self._teg_thread.start()

    def _read_tegrastats(self) -> None:
        from pipeline.errors import InputDataError
        from pipeline.profiling.tegrastats import parse_tegrastats

        assert self._teg_proc is not None and self._teg_proc.stdout is not None
        for line in self._teg_proc.stdout:
            try:
                parsed = parse_tegrastats(line)
            except InputDataError as exc:
                log.debug("%s", exc)
                continue
            parsed["t_ns"] = time.monotonic_ns()
            self._teg_last = parsed
            self._teg_lines += 1

    # -- sampling -----------------------------------------------------------------------
    def sample(self) -> dict[str, Any]:
        s: dict[str, Any] = {"t_ns": time.monotonic_ns()}
        if self._psutil is not None:
            s["cpu_percent"] = self._psutil.cpu_percent(percpu=True)
            s["rss_mb"] = self._proc.memory_info().rss / 2**20
            s["mem_used_mb"] = self._psutil.virtual_memory().used / 2**20
        if self._nv is not None:
            gpus = []
            for h in self._handles:
                u = self._nv.nvmlDeviceGetUtilizationRates(h)
                m = self._nv.nvmlDeviceGetMemoryInfo(h)
                gpus.append({"util_pct": u.gpu, "mem_util_pct": u.memory, "mem_used_mb": m.used / 2**20})
            s["gpu"] = gpus
        if self._teg_last is not None:
            s["tegrastats"] = self._teg_last
        return s

    def _run(self) -> None:
        c0 = time.thread_time()
        while True:
            self.samples.append(self.sample())
            self.cpu_s = time.thread_time() - c0
            if self._stop.wait(self.interval_s):
                self.samples.append(self.sample())
                self.cpu_s = time.thread_time() - c0
                return
