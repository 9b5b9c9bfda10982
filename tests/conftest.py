"""Shared fixtures. Tests use the real datasets of ../shared/datasets (never downloads)."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("KERASPRUNE_DATA_DIR", os.path.join(ROOT, "..", "shared", "datasets"))
DATA_DIR = os.environ["KERASPRUNE_DATA_DIR"]


@pytest.fixture(autouse=True)
def _exports_in_tmp(tmp_path, monkeypatch):
    """SavedModel exports of tests go to a temporary folder, never into the repo."""
    monkeypatch.setenv("KERASPRUNE_SAVED_MODELS", str(tmp_path / "saved_models"))


@pytest.fixture(scope="session")
def mnist_small():
    """A small real-MNIST DatasetSplits: 2,000 training (10% of them validation), 1,000 test images."""
    from kerasprune import data

    return data.load("mnist", max_train_examples=2000, max_test_examples=1000)
