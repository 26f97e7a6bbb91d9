"""Test session set-up shared by tests/ and the notebooks that nbval runs (notebooks/).

Notebooks run in smoke mode ($LOWRANK_SMOKE=1) on small synthetic IDX files ($LOWRANK_DATA), so
the tests need neither the real data sets nor network, and never write beside real results.
"""
import os
import shutil
import tempfile
from pathlib import Path

from tests.fakedata import write_fake_dataset

ROOT = Path(__file__).resolve().parent


def pytest_configure(config):
    data = Path(tempfile.mkdtemp(prefix="lowrank-testdata-"))
    for name in ("fashion_mnist", "mnist"):
        write_fake_dataset(data, name)
    os.environ["LOWRANK_DATA"] = str(data)
    os.environ["LOWRANK_SMOKE"] = "1"
    for scratch in ("results/smoke", "results/inits/smoke", "results/spectra/smoke",
                    "results/tuned/smoke", "results/shakespeare_char/smoke",
                    "img/smoke"):  # smoke output of earlier test sessions
        shutil.rmtree(ROOT / scratch, ignore_errors=True)
    config._lowrank_data = data


def pytest_unconfigure(config):
    data = getattr(config, "_lowrank_data", None)
    if data is not None:
        shutil.rmtree(data, ignore_errors=True)
