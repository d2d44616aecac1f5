"""``segfuse fleet run|eval``: many drives, one unit of work each, on Ray actors.

The driver (this module) resolves the drives, keys each unit by content (pipeline.fleet.drives),
skips the units already complete, and hands the rest to N Ray actors
(pipeline.fleet.worker.DriveWorker: models opened once per worker process). Each finished
unit's record is written atomically to ``OUT/units/<name>.json`` the moment it comes back, so a
crash or Ctrl-C keeps every completed drive; the fleet report (pipeline.fleet.report) is
written at the end whatever happened.

Layout of OUT::

    drives/<name>/      what segfuse run (recording/, overlay.mp4, summary.json) or segfuse eval
                        (eval.json as --json writes it, eval.txt) writes for that drive
    units/<name>.json   the unit's record: status, error, key, timings, worker, metrics
    fleet_report.json, fleet_report.html, plots/

Ray is imported here only, inside :func:`run_fleet`, and only when there is work to do.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from pipeline.errors import ConfigError, EngineError, SegfuseError
from pipeline.fleet.drives import DriveRef, drive_digest, file_digest, resolve_drives, settings_key, unit_key
from pipeline.fleet.worker import DriveWorker, eval_args, run_config

log = logging.getLogger(__name__)

LOCAL_OBJECT_STORE_BYTES = 256 << 20   # embedded Ray: drives and models travel by path, results are small
POLL_S = 0.5                           # how often the driver wakes to refresh the progress bar


@dataclass
class FleetOptions:
    mode: str                                        # "run" or "eval"
    drives: list[str]                                # --drives specs (pipeline.fleet.drives)
    out: str
    config: str                                      # run config (run: CONFIG; eval: --config)
    eval_argv: list[str] = field(default_factory=list)   # eval: the segfuse eval options, forwarded
    frames: int | None = None                        # run: --frames per drive
    address: str | None = None                       # None: embedded Ray on this machine
    workers: int | None = None                       # None: from the cores (or the cluster's CPUs)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None             # None: 1 where a backend needs a GPU, else 0
    retry_failed: bool = False
    overwrite: bool = False
    progress: bool = True
    log_level: str = "WARNING"                       # the workers' logging level


# --- Settings and keys ----------------------------------------------------------------------

def _settings(opts: FleetOptions) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """(settings sent to the workers, the key material, whether a worker needs a GPU). Validates
    the config and the models here, before any drive or Ray: a bad one is one clear line."""
    from pipeline.config import TAXONOMY_PATH

    settings = {"mode": opts.mode, "config": opts.config, "eval_argv": list(opts.eval_argv), "frames": opts.frames,
                "cwd": os.getcwd(), "log_level": opts.log_level}
    if not Path(opts.config).is_file():
        raise ConfigError("run config not found", path=opts.config)
    material: dict[str, Any] = {"mode": opts.mode, "config_file": file_digest(opts.config),
                                "taxonomy": file_digest(TAXONOMY_PATH)}
    if opts.mode == "eval":
        from pipeline.run_cli import model_engine_configs

        args = eval_args(settings, "<drive>", "<out>")
        cfg, engines = model_engine_configs(args)
        material.update(eval_argv=list(opts.eval_argv), resize=cfg.engines.resize)
        if args.fusion:
            material["run_config"] = _config_repr(cfg)
    else:
        cfg = run_config(settings, None, None)
        material.update(run_config=_config_repr(cfg), frames=opts.frames)
        engines = ({k: getattr(cfg.engines, k) for k in ("deeplab", "maskrcnn")} if cfg.masks == "engines" else {})
        if cfg.input.calibration:
            material["calibration"] = file_digest(cfg.input.calibration)
    for kind, ec in engines.items():
        if not Path(ec.model).is_file():
            raise EngineError(f"model file {ec.model} not found", path=opts.config, field=f"engines.{kind}.model")
        material.setdefault("engines", {})[kind] = repr(ec)
        material.setdefault("models", {})[kind] = file_digest(ec.model)
    gpu = any(ec.backend == "tensorrt" or str(ec.device).startswith("cuda") for ec in engines.values())
    return settings, material, gpu


def _config_repr(cfg: Any) -> str:
    from dataclasses import replace

    c = replace(cfg, input=replace(cfg.input, uri=None), out="", run=replace(cfg.run, progress=False))
    return repr(c)


# --- Records --------------------------------------------------------------------------------

def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)                             # a reader sees the old record or the new one


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- Ray ------------------------------------------------------------------------------------

@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the fleet like Ctrl-C (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _init_ray(opts: FleetOptions, gpus: float) -> tuple[Any, int, dict[str, Any]]:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")       # a closed network: no usage reports
    common = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
    t0 = time.perf_counter()
    if opts.address:
        ray.init(address=opts.address, **{k: v for k, v in common.items() if k != "include_dashboard"})
        res = ray.cluster_resources()
        auto = int(res.get("CPU", 1) // opts.cpus_per_worker)
        if gpus:
            auto = min(auto, int(res.get("GPU", 0) // gpus))
        if auto < 1:
            raise ConfigError(f"the cluster at {opts.address} has no room for a worker of {opts.cpus_per_worker} CPU"
                              f" and {gpus} GPU (it has {res})", field="--address")
    else:
        cores = os.cpu_count() or 1
        auto = max(1, int(cores // opts.cpus_per_worker))
        n = opts.workers or auto
        ray.init(num_cpus=max(cores, int(n * opts.cpus_per_worker + 0.999)), object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                 **common)
        have = ray.cluster_resources().get("GPU", 0)
        if gpus and have < gpus:                     # the actors would wait for a GPU for ever
            ray.shutdown()
            raise ConfigError(f"a worker needs {gpus:g} GPU (a tensorrt backend or a cuda device, or "
                              f"--gpus-per-worker) and Ray finds {have:g} on this machine", field="--gpus-per-worker")
    info = {"address": opts.address or "local", "init_s": time.perf_counter() - t0,
            "resources": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")}}
    return ray, (opts.workers or auto), info


class _Pool:
    """N actors; one drive in flight per actor; a dead actor is replaced."""

    def __init__(self, ray: Any, n: int, settings: dict[str, Any], cpus: float, gpus: float) -> None:
        self.ray = ray
        self.cls = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0)(DriveWorker)
        self.settings = settings
        self.actors = [self.cls.remote(settings) for _ in range(n)]
        self.workers: list[dict[str, Any]] = []

    def ready(self) -> None:
        try:
            self.workers = self.ray.get([a.ready.remote() for a in self.actors])
        except self.ray.exceptions.RayError as exc:    # a worker failed to start or to open the models
            cause = getattr(exc, "cause", None)
            if isinstance(cause, SegfuseError):
                raise cause from None
            raise EngineError(f"a fleet worker could not start or open the models: {cause or exc}") from None

    def replace(self, actor: Any) -> Any:
        self.ray.kill(actor, no_restart=True)
        new = self.cls.remote(self.settings)
        self.ray.get(new.ready.remote())
        self.actors[self.actors.index(actor)] = new
        return new

    def kill(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:                         # already gone
                pass


# --- The fleet ------------------------------------------------------------------------------

def run_fleet(opts: FleetOptions) -> dict[str, Any]:
    """Plan, run and report; returns the fleet report (also OUT/fleet_report.json and .html)."""
    from pipeline.fleet.report import write_report

    t_start = time.perf_counter()
    out = Path(opts.out)
    refs = resolve_drives(opts.drives)
    settings, material, need_gpu = _settings(opts)
    skey = settings_key(material)
    gpus = opts.gpus_per_worker if opts.gpus_per_worker is not None else (1.0 if need_gpu else 0.0)

    # plan: key every drive, compare with its record
    records: dict[str, dict[str, Any]] = {}
    todo: list[tuple[DriveRef, dict[str, Any]]] = []
    conflicts = []
    counts = {"complete_before": 0, "failed_before": 0, "to_run": 0, "missing": 0}
    t_hash = time.perf_counter()
    hashed_bytes = 0
    for ref in refs:
        rec_path = out / "units" / f"{ref.name}.json"
        drive_out = out / "drives" / ref.name
        base = {"drive": ref.name, "path": ref.path, "out": str(drive_out), "settings_key": skey}
        try:
            dkey, nbytes = drive_digest(ref.path)
        except SegfuseError as exc:                  # missing or unreadable: reported, the rest go on
            records[ref.name] = {**base, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                 "key": None, "finished_utc": _now(), "this_run": True}
            _write_json(rec_path, records[ref.name])
            counts["missing"] += 1
            continue
        hashed_bytes += nbytes
        key = unit_key(skey, dkey)
        prev = _read_json(rec_path)
        if prev and prev.get("key") == key and prev.get("status") == "ok":
            records[ref.name] = {**prev, "this_run": False}
            counts["complete_before"] += 1
            continue
        if prev and prev.get("key") == key and prev.get("status") == "failed" and not opts.retry_failed:
            records[ref.name] = {**prev, "this_run": False}
            counts["failed_before"] += 1
            continue
        if prev and prev.get("status") == "ok" and prev.get("key") != key and not opts.overwrite:
            conflicts.append(ref.name)
            continue
        todo.append((ref, {**base, "key": key, "drive_key": dkey, "drive_bytes": nbytes}))
    hash_s = time.perf_counter() - t_hash
    if conflicts:
        raise ConfigError(f"holds complete results of another config, other models or other drive contents for "
                          f"{len(conflicts)} drive(s) ({', '.join(conflicts[:5])}{', ...' if len(conflicts) > 5 else ''});"
                          " use a new --out, or --overwrite to replace them", path=out, field="--out")
    counts["to_run"] = len(todo)
    for ref, unit in todo:
        drive_out = Path(unit["out"])
        if drive_out.exists():
            log.info("%s: removing the incomplete output of an earlier attempt (%s)", ref.name, drive_out)
            shutil.rmtree(drive_out)

    frames_done = 0
    fleet: dict[str, Any] = {"mode": opts.mode, "config": opts.config, "eval_argv": opts.eval_argv,
                             "frames": opts.frames, "drives_given": opts.drives, "out": str(out),
                             "settings_key": skey, "started_utc": _now(), "plan": counts,
                             "hash_s": hash_s, "hashed_bytes": hashed_bytes, "stopped_by": None,
                             "ray": None, "workers": [], "gpus_per_worker": gpus,
                             "cpus_per_worker": opts.cpus_per_worker, "work_s": 0.0}
    try:
        if todo:
            frames_done = _run_units(opts, settings, todo, records, fleet, gpus, out)
    except BaseException as exc:                      # a fleet-wide failure: the report still says what was done
        fleet.update(error=f"{type(exc).__name__}: {exc}", finished_utc=_now(), wall_s=time.perf_counter() - t_start)
        write_report(fleet, [records[r.name] for r in refs if r.name in records], out)
        raise
    for ref, unit in todo:                            # never reached (an interrupt before submission)
        records.setdefault(ref.name, {**unit, "status": "interrupted", "error": "not started", "this_run": True})
    fleet.update(finished_utc=_now(), wall_s=time.perf_counter() - t_start, frames_this_run=frames_done)
    ordered = [records[r.name] for r in refs if r.name in records]
    return write_report(fleet, ordered, out)


def _run_units(opts: FleetOptions, settings: dict[str, Any], todo: list[tuple[DriveRef, dict[str, Any]]],
               records: dict[str, dict[str, Any]], fleet: dict[str, Any], gpus: float, out: Path) -> int:
    """Start Ray and the workers, hand out the drives, record each as it returns; returns the
    frames done. Sets fleet["work_s"] and, on Ctrl-C/SIGTERM, fleet["stopped_by"]."""
    from tqdm import tqdm

    frames_done = 0
    t_work = time.perf_counter()
    if todo:
        ray, n, info = _init_ray(opts, gpus)
        n = min(n, len(todo))
        fleet["ray"] = info
        pool = None
        inflight: dict[Any, tuple[Any, DriveRef, dict[str, Any]]] = {}
        try:
            with _sigterm_as_interrupt():
                try:
                    t_actors = time.perf_counter()
                    pool = _Pool(ray, n, settings, opts.cpus_per_worker, gpus)
                    pool.ready()
                    fleet["workers"] = pool.workers
                    fleet["actors_ready_s"] = time.perf_counter() - t_actors
                    queue = list(todo)
                    t_work = time.perf_counter()
                    with tqdm(total=len(todo), desc=f"segfuse fleet {opts.mode}", unit="drive",
                              disable=not opts.progress, dynamic_ncols=True) as bar:
                        for actor in pool.actors:
                            if queue:
                                ref, unit = queue.pop(0)
                                inflight[actor.process.remote(unit)] = (actor, ref, unit)
                        while inflight:
                            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=POLL_S)
                            for fut in ready:
                                actor, ref, unit = inflight.pop(fut)
                                try:
                                    result = ray.get(fut)
                                except ray.exceptions.RayActorError as exc:
                                    result = {"status": "failed", "error": f"the worker process died: {exc}"}
                                    actor = pool.replace(actor)
                                rec = {**unit, **result, "finished_utc": _now(), "this_run": True}
                                records[ref.name] = rec
                                _write_json(out / "units" / f"{ref.name}.json", rec)
                                frames_done += int(rec.get("frames") or 0)
                                bar.update(1)
                                if rec["status"] != "ok":
                                    log.warning("%s failed: %s", ref.name, rec.get("error"))
                                if queue:
                                    nref, nunit = queue.pop(0)
                                    inflight[actor.process.remote(nunit)] = (actor, nref, nunit)
                            elapsed = max(time.perf_counter() - t_work, 1e-9)
                            failed = sum(1 for r in records.values() if r.get("this_run") and r["status"] != "ok")
                            bar.set_postfix(fps=f"{frames_done / elapsed:.2f}", failed=failed, refresh=True)
                    fleet["work_s"] = time.perf_counter() - t_work
                except KeyboardInterrupt:
                    fleet["stopped_by"] = "signal"
                    log.warning("interrupted: stopping the workers; completed drives are kept, %d in flight are "
                                "not (a rerun does them)", len(inflight))
                    for _, ref, unit in inflight.values():
                        rec = {**unit, "status": "interrupted", "error": "stopped by Ctrl-C/SIGTERM before it "
                               "finished; its partial output is removed by the next run", "finished_utc": _now(),
                               "this_run": True}
                        records[ref.name] = rec
                        _write_json(out / "units" / f"{ref.name}.json", rec)
                    inflight.clear()
                    if pool is not None:
                        pool.kill()
                        pool = None
        finally:
            t_down = time.perf_counter()
            if "work_s" not in fleet or not fleet["work_s"]:     # interrupted: up to now
                fleet["work_s"] = t_down - t_work
            if pool is not None:
                try:                                  # close engines (TensorRT contexts, GPU memory)
                    ray.get([a.close.remote() for a in pool.actors], timeout=30)
                except Exception as exc:
                    log.warning("closing the workers' engines: %s", exc)
                pool.kill()
            ray.shutdown()
            fleet["teardown_s"] = time.perf_counter() - t_down     # closing the workers, ray.shutdown
    return frames_done
