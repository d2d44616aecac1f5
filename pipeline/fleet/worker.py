"""One fleet worker: opens the models once, then does drive after drive with the same code as
``segfuse run`` / ``segfuse eval``, so a drive's outputs are exactly what those commands write.

A plain class with no Ray in it: ``pipeline.fleet.execute`` wraps it as a Ray actor (one
process per worker, its engines kept open across drives). A drive's failure is caught here and
returned as its result (the error, the end of the traceback), so the worker goes on to the next.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODES = ("run", "eval")


def eval_args(settings: dict[str, Any], drive: str, out: str) -> Any:
    """The argparse Namespace ``segfuse eval --drive DRIVE <options>`` parses to (the same parser)."""
    import argparse

    from pipeline import run_cli

    parser = argparse.ArgumentParser(prog="segfuse")
    run_cli.register(parser.add_subparsers(dest="command"))
    argv = ["eval", "--drive", drive, *settings["eval_argv"], "--out", out, "--no-progress"]
    return parser.parse_args(argv)


def run_config(settings: dict[str, Any], drive: str | None, out: str | None) -> Any:
    """The run config ``segfuse run CONFIG --input DRIVE --out OUT [--frames N]`` would use."""
    from pipeline.run_config import load_run_config

    return load_run_config(settings["config"]).with_overrides(input=drive, out=out, frames=settings.get("frames"))


class DriveWorker:
    """Keeps its engines open across drives; ``process(unit)`` does one drive."""

    def __init__(self, settings: dict[str, Any]) -> None:
        if settings["mode"] not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.settings = settings
        if settings.get("cwd"):
            os.chdir(settings["cwd"])               # configs name models relative to the caller's folder
        logging.basicConfig(level=settings.get("log_level", "WARNING"),
                            format="%(levelname)s %(name)s: %(message)s")
        self.engines: dict[str, Any] | None = None
        self.load_s = 0.0

    def ready(self) -> dict[str, Any]:
        """Open (and warm) the models once; returns where this worker runs and what it cost."""
        from pipeline.runner import _warm_engine

        t0 = time.perf_counter()
        s = self.settings
        engines: dict[str, Any] = {}
        try:
            if s["mode"] == "eval":
                from engines.factory import create_engine
                from pipeline.run_cli import model_engine_configs

                _, configs = model_engine_configs(eval_args(s, "<drive>", "<out>"))
                for kind, ec in configs.items():
                    engines[kind] = create_engine(ec)
            else:
                from pipeline.runner import open_engine

                cfg = run_config(s, None, None)
                if cfg.masks == "engines":
                    for kind in ("deeplab", "maskrcnn"):
                        engines[kind] = open_engine(getattr(cfg.engines, kind), kind, config_path=cfg.path)
            for e in engines.values():
                _warm_engine(e)
        except BaseException:
            for e in engines.values():
                e.close()
            raise
        self.engines = engines or None
        self.load_s = time.perf_counter() - t0
        return {"pid": os.getpid(), "host": socket.gethostname(), "load_s": self.load_s,
                "engines": {k: f"{Path(e.path).name} ({e.backend}, {e.precision})" for k, e in engines.items()}}

    def process(self, unit: dict[str, Any]) -> dict[str, Any]:
        """One drive: ``unit`` has path, out (its output folder). Never raises for a drive's fault."""
        t0 = time.perf_counter()
        out = Path(unit["out"])
        result: dict[str, Any] = {"worker": {"pid": os.getpid(), "host": socket.gethostname()}}
        try:
            if self.settings["mode"] == "eval":
                from pipeline.run_cli import evaluate_models_cli

                out.mkdir(parents=True, exist_ok=True)
                args = eval_args(self.settings, unit["path"], str(out))
                metrics, table = evaluate_models_cli(args, engines_open=self.engines)
                (out / "eval.json").write_text(json.dumps(metrics, indent=1))     # as segfuse eval --json writes
                (out / "eval.txt").write_text(table + "\n")
                frames = max(metrics.get(k, {}).get("frames", 0) for k in ("deeplab", "maskrcnn"))
                result.update(status="ok", metrics=metrics, frames=frames)
            else:
                from pipeline.runner import run_pipeline

                summary = run_pipeline(run_config(self.settings, unit["path"], str(out)), progress=False,
                                       engines=self.engines)
                result.update(metrics=summary, frames=summary["frames"]["done"])
                problems = summary["input_errors"] + summary["failures"][:3]
                if summary["stopped_by"] == "signal":
                    result.update(status="interrupted", error="stopped by a signal")
                elif problems:
                    result.update(status="failed", error="; ".join(problems))
                else:
                    result["status"] = "ok"
        except Exception as exc:                    # one drive's fault: reported, the worker goes on
            result.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                          traceback="".join(traceback.format_exception(exc)[-6:]))
        result["seconds"] = time.perf_counter() - t0
        return result

    def close(self) -> None:
        for e in (self.engines or {}).values():
            e.close()
        self.engines = None
