"""``segfuse engines bench``: warm-up then timed iterations of a tiny exported DeepLab."""
from __future__ import annotations

import json

from pipeline.cli import main


def test_engines_bench_cli(deeplab_onnx, tmp_path, capsys):
    path = deeplab_onnx.path                     # the session's shared DeepLab (tests/conftest.py)
    out = tmp_path / "bench.json"
    assert main(["engines", "bench", f"onnxruntime/fp32:{path}", "--warmup", "1", "--iterations", "4",
                 "--threads", "1", "--no-progress", "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())
    lat = r["latency_ms"]
    assert r["kind"] == "deeplab" and r["backend"] == "onnxruntime"
    assert r["input_hw"] == list(deeplab_onnx.spec.input_hw)
    assert lat["iterations"] == 4 and r["warmup"] == 1
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert abs(lat["throughput_per_s"] - 1000.0 / lat["mean"]) < 1e-6
    text = capsys.readouterr().out
    assert path.name in text and f"{lat['p50']:8.2f}" in text


def test_engines_bench_refuses_missing_model(tmp_path, caplog):
    assert main(["engines", "bench", str(tmp_path / "nope.onnx"), "--no-progress"]) == 2
    assert "nope.onnx" in caplog.text
