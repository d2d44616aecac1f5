"""Profiling: per-frame stage traces, system samples aligned in time, reports (``segfuse profile``).

- ``tegrastats``: a pure parser of Jetson ``tegrastats`` lines (Orin Nano/NX, AGX Orin);
- ``system``: machine info (CPU, GPU, Jetson power mode) and a sampler thread (psutil CPU per
  core and RSS, NVML GPU, tegrastats) stamped on the same monotonic clock as the FrameTraces;
- ``stats``: percentiles and jitter from a profile (one function, used by the summary, the
  HTML report and ``compare``);
- ``report``: plots (matplotlib, Agg), ``report.html``, the printed summary, ``compare``;
- ``profile``: runs the pipeline through ``pipeline.runner.run_pipeline`` and writes
  ``profile.json``; ``find_peak`` searches the highest replay rate the pipeline keeps up with.

Nothing here imports heavy modules at import time.
"""
