import json
import subprocess
import sys

import pytest

from tf_supermask.tools.benchmark import run_benchmark


def test_benchmark_records_every_model_and_mode():
    lines = []
    records = run_benchmark(["fc"], ["dense", "topk"], batch_size=8, steps=2, repeats=1,
                            log=lines.append)
    assert [(r["model"], r["mask"]) for r in records] == [("fc", "dense"), ("fc", "topk")]
    assert records[0]["ratio_to_dense"] == 1.0
    assert all(r["images_per_s"] > 0 for r in records)
    assert records[1]["ratio_to_dense"] == pytest.approx(records[1]["step_ms"] / records[0]["step_ms"])
    assert len(lines) == 2 and "images/s" in lines[1]


def test_bench_binary_writes_json(tmp_path):
    output = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "tf_supermask.bin.bench", "--models=fc",
                             "--masks=dense,bernoulli", "--batch_size=8", "--steps=2",
                             "--repeats=1", f"--output={output}"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    records = json.loads(output.read_text())
    assert {"model", "mask", "images_per_s", "ratio_to_dense"} <= set(records[0])
    # The control is a second dense model, timed in the same rounds (the noise floor).
    assert [r["mask"] for r in records] == ["dense", "bernoulli", "dense_control"]
    assert records[2]["ratio_to_dense"] > 0
