"""``segfuse engines bench``: warm-up then timed iterations of a tiny exported DeepLab."""
from __future__ import annotations

import json

from pipeline.cli import main


def test_engines_bench_cli(tmp_path, capsys):
    from engines.export import export_onnx
    from engines.models import default_spec, random_model

    spec = default_spec("deeplabv3_mobilenet_v3_large", input_hw=(64, 128))
    path = tmp_path / "deeplab.onnx"
    export_onnx(spec, path, model=random_model(spec, seed=1), verify_frames=[])
    out = tmp_path / "bench.json"
    assert main(["engines", "bench", f"onnxruntime/fp32:{path}", "--warmup", "1", "--iterations", "4",
                 "--threads", "1", "--no-progress", "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())
    lat = r["latency_ms"]
    assert r["kind"] == "deeplab" and r["backend"] == "onnxruntime" and r["input_hw"] == [64, 128]
    assert lat["iterations"] == 4 and r["warmup"] == 1
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert abs(lat["throughput_per_s"] - 1000.0 / lat["mean"]) < 1e-6
    text = capsys.readouterr().out
    assert "deeplab.onnx" in text and f"{lat['p50']:8.2f}" in text


def test_engines_bench_refuses_missing_model(tmp_path, caplog):
    assert main(["engines", "bench", str(tmp_path / "nope.onnx"), "--no-progress"]) == 2
    assert "nope.onnx" in caplog.text
