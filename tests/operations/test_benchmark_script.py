"""`python scripts/benchmark.py` on tiny synthetic settings, in a subprocess: it reports every measurement
(never a timing assertion: speed is measured by the script, not by tests)."""

import json
import re

import pytest

from tests.scripts import run_script

TINY = [
    "--device", "cpu", "--image-size", "32", "--base-channels", "4", "--depth", "2", "--batch-size", "4",
    "--inference-batch-size", "4", "--inference-steps", "2", "--timed-epochs", "1", "--pipeline-batches", "2",
    "--num-workers", "1", "--end-to-end-epochs", "2", "--rounds", "3",
]  # fmt: skip
NUMBER = r"\d+(\.\d+)?"


def benchmark(*flags):
    return run_script("benchmark", *TINY, *flags)


@pytest.mark.slow
def test_benchmark_reports_fast_and_reference_loops(tmp_path):
    result = benchmark("--synthetic", "10", "--json", str(tmp_path / "results.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    measured = rf"{NUMBER} images/s \({NUMBER}-{NUMBER}\)\s+{NUMBER} TFLOP/s"  # median (range over the rounds)
    for section, name in [("training", "fast"), ("training", "data on device"), ("training", "reference"),
                          ("inference", "fast"), ("inference", "reference")]:  # fmt: skip
        assert re.search(rf"^{section}\s+{name}\s+{measured}$", result.stdout, re.M), name
    for section in ("training", "inference", "pipeline"):
        assert re.search(rf"^{section}\s+speed-up\s+{NUMBER}x \({NUMBER}-{NUMBER}\)$", result.stdout, re.M), section
    assert re.search(rf"^pipeline\s+reference\s+{NUMBER} samples/s \({NUMBER}-{NUMBER}\)$", result.stdout, re.M)
    assert re.search(
        rf"^end to end\s+train.py\s+{NUMBER} images/s\s+{NUMBER} s wall for 2 epochs$", result.stdout, re.M
    )
    assert re.search(r"^training\s+fast / device\s+\d+\.\d% \(\d+\.\d%-\d+\.\d%\)$", result.stdout, re.M)
    assert re.search(r"^rounds: 3, the paths compared timed in turn", result.stdout, re.M)
    assert "device: cpu" in result.stdout and "10 synthetic Kvasir-sized images" in result.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["training"]["fast"]["images_per_s"] > 0 and results["pipeline"]["fast"]["images_per_s"] > 0
    for section in ("training", "inference", "pipeline"):
        low, high = results[section]["fast"]["images_per_s_range"]
        assert low <= results[section]["fast"]["images_per_s"] <= high
        speedup = results[section]["speedup"]
        assert speedup["min"] <= speedup["median"] <= speedup["max"]
    assert results["flops_per_image"]["training"] > 2 * results["flops_per_image"]["inference"] > 0
    assert results["settings"]["BASE_CHANNELS"] == 4 and results["settings"]["COMPILE"] == "off"
    assert results["steps_per_epoch"] == 10 // 4 and results["end_to_end"]["epochs"] == 2
    assert results["end_to_end"]["images_trained"] > 0 and results["end_to_end"]["wall_seconds"] > 0


@pytest.mark.slow
def test_benchmark_without_data_says_how_to_get_some(tmp_path):
    result = benchmark("--data-dir", str(tmp_path / "empty"))
    assert result.returncode == 2
    assert "--synthetic N" in result.stderr and "Traceback" not in result.stderr
