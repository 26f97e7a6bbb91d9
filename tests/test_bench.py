"""The sweep benchmark runs end to end (tiny data) and reports ratios consistent with its times."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_bench_sweep_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_sweep.py"), "--smoke", "--epochs", "1",
         "--skip-epoch-bench", "--device", "cpu", "--data-root", os.environ["LOWRANK_DATA"],
         "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(out.read_text())
    assert got["sweep_configs"] == 17 and got["epochs"] == 1
    assert got["speedup"] == pytest.approx(got["one_at_a_time_s"] / got["engine_s"])
    assert got["engine_over_bound"] == pytest.approx(got["engine_s"] / got["flop_bound_s"])
    assert got["small_three_over_one"] == pytest.approx(
        got["small_ranks_3_seeds_s"] / got["small_ranks_1_seed_s"])
    assert 0 < got["matmul_at_step_shapes_s"] and 0 < got["rest_of_step_s"]
    assert "speed-up over one at a time" in proc.stdout and "matrix products" in proc.stdout


def test_bench_optimizers_smoke(tmp_path):
    """Part 5: per tuned optimizer, the engine (written-out step) against one model at a time
    and against itself on autograd, in one run."""
    out = tmp_path / "opt.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_sweep.py"), "--smoke", "--epochs", "1",
         "--optimizers-only", "--device", "cpu", "--data-root", os.environ["LOWRANK_DATA"],
         "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(out.read_text())["optimizers"]
    assert set(got) == {"sgd", "adamw"}
    assert got["sgd"]["step_mode"] == "fused momentum"
    assert got["adamw"]["step_mode"] == "written backward + AdamW"
    for res in got.values():
        assert res["speedup"] == pytest.approx(res["one_at_a_time_s"] / res["engine_s"])
        assert res["written_over_autograd"] == pytest.approx(
            res["engine_autograd_s"] / res["engine_s"])


def test_bench_lm_smoke(tmp_path):
    """The LM benchmark: one model at a time against many at once, tokens per second."""
    out = tmp_path / "lm.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_lm.py"), "--smoke", "--steps", "3",
         "--repeats", "1", "--models", "2", "--data-root", str(tmp_path / "data"),
         "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(out.read_text())
    for name in ("dense", "both r=4"):
        g = got[name]
        assert g["speedup"] == pytest.approx(g["one_at_a_time_s"] / g["together_s"])
        assert g["tokens_per_s_one"] == pytest.approx(
            2 * 3 * got["tokens_per_step"] / g["one_at_a_time_s"])
    assert got["dense_one_over_nanogpt"] == pytest.approx(
        got["dense"]["tokens_per_s_one"] / got["nanogpt_reference_tokens_per_s"])
    assert "speed-up over one at a time" in proc.stdout


def test_bench_engine_smoke(tmp_path):
    """The engine against the generic stacked path (and one at a time), ratios from the
    times, and the rule's verdict said."""
    out = tmp_path / "engine.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_engine.py"), "--epochs", "1",
         "--train-subset", "256", "--data-root", os.environ["LOWRANK_DATA"],
         "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(out.read_text())
    assert got["configurations"] == 17 and got["stacks"] == 9
    assert got["engine_over_generic"] == pytest.approx(got["generic_s"] / got["engine_s"])
    assert got["generic_over_alone"] == pytest.approx(got["alone_s"] / got["generic_s"])
    assert got["engine_stays"] == (got["engine_over_generic"] >= got["rule"])
