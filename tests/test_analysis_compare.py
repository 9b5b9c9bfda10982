"""The analysis stage as a library call: ``AnalysisConfig`` (presets, checks, the command's flags),
the cache keys of earlier versions, and ``compare()`` from Python on two small real models.
"""
import dataclasses
import importlib
import json
import os

import numpy as np
import pytest

from kerasprune import analysis, cli
from kerasprune.analysis import AnalysisConfig
from kerasprune.errors import KerasPruneError

compare_module = importlib.import_module("kerasprune.analysis.compare")  # analysis.compare is the function
ANALYSIS_KEYS = {"models", "settings", "conventions", "warnings", "hessian_top5", "hessian", "psp_l2",
                 "psp_entropy_1", "psp_entropy_2", "performance", "plane", "grid", "figures",
                 "seconds_this_session"}
# analysis.json's conventions of the units at their defaults (docs/analysis.md, "The paper's units")
DEFAULT_UNITS = {"train_loss": "mean", "psp_l2": "mean", "psp_entropy_aggregate": "neurons"}


def test_presets_fill_the_sizes_left_unset_and_flags_override_them():
    full, quick = AnalysisConfig(dataset="mnist"), AnalysisConfig.quick(dataset="mnist", grid=3)
    assert {k: getattr(full, k) for k in compare_module.FULL} == compare_module.FULL
    assert {k: getattr(quick, k) for k in compare_module.QUICK} == compare_module.QUICK | {"grid": 3}
    assert full.settings()["quick"] is False and quick.settings()["quick"] is True
    args = cli.build_parser().parse_args(["analyze", "--g", "G", "--oneshot", "S", "--dataset", "mnist",
                                          "--out", "o", "--quick", "--grid", "3"])
    from kerasprune.commands import analyze

    assert analyze.analysis_config(args) == quick


@pytest.mark.parametrize("fields, message", [
    ({"grid": 1}, "grid must be at least 2"),
    ({"eigen_method": "qr"}, "eigen_method must be one of lanczos, arpack, power, both, all"),
    ({"preset": "slow"}, "preset must be one of quick, full"),
    ({"psp_entropy": "paper"}, "psp_entropy must be one of kerasprune, reference"),
    ({"top_k": 0}, "top_k must be >= 1"),
    ({"alpha_range": (0.0,)}, r"alpha_range must be \(min, max\)"),
    ({"tol": "1e-3"}, "tol must be float or int"),
])
def test_wrong_settings_are_one_line_errors_when_the_config_is_made(fields, message):
    with pytest.raises(KerasPruneError, match=message):
        AnalysisConfig(dataset="mnist", **fields)


def test_cache_keys_are_those_of_earlier_versions():
    """Literal keys computed by the ``kerasprune analyze`` of before ``compare`` (commit a91fbd1):
    its ``parts/`` stay valid."""
    identity = {"g": ["/x/g", 1700000000.5], "oneshot": ["/x/s", 1700000001.25]}
    configs = [
        (AnalysisConfig(dataset="mnist"), ("9129ef9eb850209e", "033873ec6effc790", "9d688e564da6ef7b")),
        (AnalysisConfig.quick(dataset="mnist", grid=3, psp_entropy="reference", support="all", eigen_method="both",
                              masked=False, trace=True, max_train_examples=2000, alpha_range=(-1, 2)),
         ("4783cb85bbe87995", "07b20117656f9963", "13409e0260452459")),
    ]
    key, keyed = compare_module._key, compare_module._keyed
    for config, expected in configs:
        settings = config.settings()
        assert (key(identity["g"], {k: settings[k] for k in compare_module.HESSIAN_KEYS}),
                key(identity["g"], keyed(settings)), key(identity, keyed(settings))) == expected


@pytest.fixture(scope="module")
def lenet300_pair(tmp_path_factory):
    """A LeNet-300 trained for one epoch on 300 real MNIST images, exported as a SavedModel, and a
    90% layer-wise magnitude-pruned copy of it (a Keras model)."""
    from kerasprune import data, models, training

    splits = data.load("mnist", max_train_examples=300, max_test_examples=100, batch_size=50)
    model = models.build("lenet300", seed=0)
    training.compile_model(model, training.make_optimizer("sgd", 0.1))
    model.fit(splits.train, epochs=1, verbose=0)
    path = training.export_saved_model(model, str(tmp_path_factory.mktemp("dense") / "dense"))
    pruned = models.build("lenet300", seed=0)
    pruned.set_weights(model.get_weights())
    for kernel in (v for v in pruned.trainable_variables if len(v.shape) > 1):
        w = kernel.numpy()
        kernel.assign(np.where(np.abs(w) > np.quantile(np.abs(w), 0.9), w, 0.0))
    return pruned, path


def test_a_saved_model_reached_through_a_symlink_keeps_its_identity(lenet300_pair, tmp_path):
    """The cached parts are keyed by the model's identity: the same SavedModel through a linked
    folder (a worktree's `runs` symlink) must find them, not recompute an hour of Hessian."""
    import tensorflow as tf

    _, dense_path = lenet300_pair
    link = tmp_path / "runs"
    link.symlink_to(os.path.dirname(dense_path))
    strategy = tf.distribute.get_strategy()
    _, path, identity = compare_module._open_model("g", dense_path, strategy)
    _, linked_path, linked_identity = compare_module._open_model("g", str(link / "dense"), strategy)
    assert linked_identity == identity == [os.path.realpath(dense_path), identity[1]]
    assert linked_path == str(link / "dense") != path  # reports keep the path as given


def test_compare_from_python_writes_the_analysis_and_a_second_call_reads_it_back(lenet300_pair, tmp_path,
                                                                                monkeypatch):
    from kerasprune.analysis import landscape

    pruned, dense_path = lenet300_pair
    before = pruned.get_weights()
    config = AnalysisConfig.quick(dataset="mnist", max_train_examples=300, max_test_examples=200, grid=2,
                                  hessian_examples=100, grid_train_examples=100, grid_test_examples=100,
                                  pair_samples=50, top_k=2, batch_size=100)
    out = tmp_path / "analysis"
    result = analysis.compare(config, pruned, dense_path, str(out), verbose=0)

    assert set(result) == ANALYSIS_KEYS
    assert json.loads((out / "analysis.json").read_text()) == result
    assert result["models"] == {"g": None, "oneshot": os.path.abspath(dense_path)}
    assert result["settings"] == config.settings() and result["warnings"] == []
    assert result["conventions"] == {"psp_entropy": "kerasprune", "psp_entropy_2": "kerasprune",
                                     "support": "union", "eigen_method": "lanczos", "hessian_parameters": "unpruned",
                                     **DEFAULT_UNITS}
    for name in ("g", "oneshot"):
        top = result["hessian_top5"][name]
        assert len(top) == 2 and top == sorted(top, reverse=True) and top[0] > 0
        assert result["hessian"][name]["examples"] == 100
    assert result["performance"]["g"]["pruned_params_pct"] > 80 > result["performance"]["oneshot"]["pruned_params_pct"]
    assert np.shape(result["grid"]["maps"]["train_loss"]) == (2, 2)
    assert "eigenvalues.png" in result["figures"] and all((out / f).stat().st_size > 1000 for f in result["figures"])
    assert list((out / "tensorboard" / "oneshot").glob("events.out.tfevents.*"))
    assert {p.name for p in (out / "parts").iterdir() if p.suffix == ".json"} == {
        "hessian_g.json", "hessian_oneshot.json", "psp_g.json", "psp_oneshot.json"}
    assert all(np.array_equal(a, b) for a, b in zip(before, pruned.get_weights()))  # the maps restored G

    def refuse(*args, **kwargs):
        raise RuntimeError("recomputed")

    for module, name in ((compare_module, "hessian_summary"), (compare_module, "psp_summary"),
                         (landscape, "evaluate_point")):
        monkeypatch.setattr(module, name, refuse)
    again = analysis.compare(config, pruned, dense_path, str(out), verbose=0)
    assert {k: v for k, v in again.items() if k != "seconds_this_session"} == {
        k: v for k, v in result.items() if k != "seconds_this_session"}
    with pytest.raises(RuntimeError, match="recomputed"):  # another convention: the PSP step again
        analysis.compare(dataclasses.replace(config, psp_entropy="reference"), pruned, dense_path, str(out),
                         verbose=0)
    with pytest.raises(KerasPruneError, match="AnalysisConfig.dataset is not set"):
        analysis.compare(dataclasses.replace(config, dataset=None), pruned, dense_path, str(out))
