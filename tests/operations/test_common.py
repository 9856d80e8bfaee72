"""Small shared helpers of common/ and dataset/loader.py: message lists, JSON files, CPU threads, timing, workers."""

import json

import pytest
import torch

from common import device as device_module
from common.config import parse_settings
from common.device import interleaved_seconds, ratio_spread, seconds_per_call, spread, use_threads
from common.errors import UserError, first_few
from common.files import write_json_atomic
from dataset import loader
from dataset.loader import worker_count


def test_first_few_names_the_first_ones_and_counts_the_rest():
    assert first_few(["a", "b"], 3) == "a, b"
    assert first_few(["a", "b", "c", "d", "e"], 3) == "a, b, c and 2 more"
    assert first_few([1, 2], 1) == "1 and 1 more"


def test_write_json_atomic_writes_indented_json_with_a_final_newline(tmp_path):
    path = tmp_path / "nested" / "summary.json"
    write_json_atomic(path, {"dice": 0.5, "runs": [1, 2]})
    assert path.read_text().endswith("}\n") and "\n  " in path.read_text()
    assert json.loads(path.read_text()) == {"dice": 0.5, "runs": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]  # no temporary file left


def test_use_threads_sets_a_positive_count_keeps_the_default_for_0_and_refuses_a_negative(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    use_threads(0)
    use_threads(3)
    assert calls == [3]
    with pytest.raises(UserError, match=r"^THREADS must be >= 0 \(0 keeps PyTorch's default\)\.$"):
        use_threads(-1)


def test_seconds_per_call_runs_the_warmup_then_at_least_the_timed_calls(monkeypatch):
    calls, synchronised = [], []
    monkeypatch.setattr(device_module, "synchronize", synchronised.append)
    seconds = seconds_per_call(lambda: calls.append(1), torch.device("cpu"), warmup=2, calls=5)
    assert len(calls) == 7 and seconds >= 0 and len(synchronised) == 2  # once before the timing, once after


@pytest.mark.parametrize(
    ("cpus", "requested", "processes", "at_least", "workers"),
    [(16, -1, 1, 0, 8), (4, -1, 1, 0, 3), (1, -1, 1, 0, 0), (1, -1, 1, 1, 1), (16, -1, 3, 1, 5), (16, 2, 3, 1, 2)],
)
def test_worker_count_shares_the_cores_but_one(monkeypatch, cpus, requested, processes, at_least, workers):
    monkeypatch.setattr(loader.os, "cpu_count", lambda: cpus)
    assert worker_count(requested, processes, at_least=at_least) == workers


def test_a_list_flag_given_twice_takes_both_and_no_flag_is_abbreviated(tmp_path, capsys):
    script = tmp_path / "script.py"
    script.write_text('"""A script."""\nCHECKPOINT = ["a.pth"]  # models\nSEED = 42  # the seed\n')
    defaults = {"CHECKPOINT": ["a.pth"], "SEED": 42}
    values = parse_settings(defaults, script, ["--checkpoint", "b.pth", "--checkpoint", "c.pth", "d.pth"]).values
    assert values["CHECKPOINT"] == ["b.pth", "c.pth", "d.pth"]
    assert parse_settings(defaults, script, []).values["CHECKPOINT"] == ["a.pth"]
    with pytest.raises(SystemExit):
        parse_settings(defaults, script, ["--see", "7"])
    assert "unrecognized arguments: --see 7" in capsys.readouterr().err


def test_interleaved_seconds_times_the_calls_in_turn_with_untimed_calls_before_each_round():
    order = []
    calls = {"reference": lambda: order.append("r"), "fast": lambda: order.append("f")}
    seconds = interleaved_seconds(calls, torch.device("cpu"), rounds=3, calls_per_round=2, untimed={"fast": 1})
    assert "".join(order) == "rrfff" * 3
    assert {name: len(each) for name, each in seconds.items()} == {"reference": 3, "fast": 3}
    assert all(value >= 0 for each in seconds.values() for value in each)


def test_spread_is_the_median_and_the_range():
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert spread([4.0, 1.0, 2.0, 10.0]) == {"median": 3.0, "min": 1.0, "max": 10.0}


def test_a_ratio_spread_takes_each_rounds_own_ratio():
    """Round 2 ran twice as slow for both paths (load drift): its own ratio is still 2."""
    assert ratio_spread([2.0, 4.0, 2.0], [1.0, 2.0, 0.5]) == {"median": 2.0, "min": 2.0, "max": 4.0}
