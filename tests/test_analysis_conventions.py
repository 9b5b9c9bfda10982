"""The unit conventions of the reported numbers (docs/analysis.md, "The paper's units"), each against a
hand computation: per-batch training loss, sum-units PSP L2, entropy aggregation over layers, the
Hessian on the whole training split, and the eigenvalue chart's log axis."""
import importlib
import math
import types

import numpy as np
import pytest

from kerasprune._keras import keras, tf
from kerasprune import analysis, cli
from kerasprune.analysis import AnalysisConfig, plots
from kerasprune.errors import KerasPruneError

compare_module = importlib.import_module("kerasprune.analysis.compare")


def fixed_model(hidden_kernel, output_kernel, inputs=2):
    """Dense (no bias) -> ReLU -> Dense logits (no bias), with the given kernels."""
    x = keras.Input((inputs,))
    h = keras.layers.Dense(len(hidden_kernel[0]), use_bias=False, name="hidden")(x)
    h = keras.layers.ReLU(name="relu")(h)
    model = keras.Model(x, keras.layers.Dense(len(output_kernel[0]), use_bias=False, name="logits")(h))
    model.get_layer("hidden").set_weights([np.array(hidden_kernel, np.float32)])
    model.get_layer("logits").set_weights([np.array(output_kernel, np.float32)])
    return model


def dataset(x, y, batch):
    return tf.data.Dataset.from_tensor_slices((np.array(x, np.float32), np.array(y, np.int64))).batch(batch)


def test_per_batch_training_loss_is_the_sum_of_batch_means_over_the_examples():
    """3 examples with logits [0, 0] (ln 2 each), batches of 2: (ln 2 + ln 2) / 3; the mean is ln 2."""
    model = fixed_model([[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]])
    for batch in (1, 3):  # the pass's own batching does not matter
        stats = analysis.psp_statistics(model, dataset([[1, 2], [3, 4], [5, 6]], [0, 1, 0], batch),
                                        num_classes=2, example_losses=True)
        np.testing.assert_allclose(stats.example_losses, [math.log(2)] * 3, rtol=1e-6)
        assert analysis.training_loss(stats, "per-batch", 2) == pytest.approx(0.462098, abs=1e-6)
        assert analysis.training_loss(stats, "mean") == pytest.approx(0.693147, abs=1e-6) == stats.loss
    assert analysis.per_batch_loss([1.0, 3.0, 5.0, 7.0, 9.0], 2) == pytest.approx((2 + 6 + 9) / 5)
    assert analysis.per_batch_loss(np.full(300, 0.5), 100) == pytest.approx(0.5 / 100)
    plain = analysis.psp_statistics(model, dataset([[1, 2], [3, 4]], [0, 1], 2), num_classes=2)
    with pytest.raises(KerasPruneError, match="no per-example losses"):
        analysis.training_loss(plain, "per-batch")
    with pytest.raises(KerasPruneError, match="unknown training-loss convention 'sum'"):
        analysis.training_loss(plain, "sum")


def test_sum_units_psp_l2_sums_e_z2_over_hidden_and_output_units():
    """Hidden z = [1, -2], [3, 0]: E[z^2] = [5, 2] -> 7; logits relu(z) @ [[1, 0], [1, 0]] = [1, 0],
    [3, 0]: [5, 0] -> 5; total 12. The mean convention: mean z^2 over hidden values, 3.5."""
    model = fixed_model([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]])
    stats = analysis.psp_statistics(model, dataset([[1, -2], [3, 0]], [0, 1], 2), num_classes=2,
                                    first_order=False)
    summed = analysis.psp_l2(stats, "sum-units")
    assert summed["per_layer"] == pytest.approx({"relu": 7.0, "logits": 5.0}, rel=1e-6)
    assert summed["overall"] == pytest.approx(12.0, rel=1e-6)
    assert analysis.psp_l2(stats)["overall"] == pytest.approx(3.5, rel=1e-6)
    assert analysis.psp_l2(stats, "mean") == analysis.psp_l2(stats)
    with pytest.raises(KerasPruneError, match="unknown PSP L2 convention 'norm'"):
        analysis.psp_l2(stats, "norm")


def test_sum_units_psp_l2_of_a_conv_layer_averages_over_positions():
    """A 1x1 conv of weight 1 on the 1x2 image [1, 3]: one channel, mean over positions (1 + 9) / 2 = 5
    (a sum over positions would give 10)."""
    x = keras.Input((1, 2, 1))
    h = keras.layers.Conv2D(1, 1, use_bias=False, name="conv")(x)
    h = keras.layers.Flatten()(keras.layers.ReLU(name="relu_conv")(h))
    model = keras.Model(x, keras.layers.Dense(2, use_bias=False, name="logits")(h))
    model.get_layer("conv").set_weights([np.ones((1, 1, 1, 1), np.float32)])
    model.get_layer("logits").set_weights([np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)])
    stats = analysis.psp_statistics(model, dataset([[[[1.0], [3.0]]]], [0], 1), num_classes=1, first_order=False)
    summed = analysis.psp_l2(stats, "sum-units")
    assert summed["per_layer"]["relu_conv"] == pytest.approx(5.0, rel=1e-6)
    assert summed["per_layer"]["logits"] == pytest.approx(1.0, rel=1e-6)  # logits [1, 0]
    assert summed["overall"] == pytest.approx(6.0, rel=1e-6)


def test_entropy_aggregated_over_layers_is_the_mean_of_the_layer_means():
    """Layer A with per-neuron entropies [0, 2] and layer B with [4] (4 classes of 2 examples; a
    neuron on in one of them has 1 bit there): over neurons 2.0, over layers 2.5."""
    stats = analysis.PSPStats(
        layers=["a", "b"], unit_shapes={"a": (2,), "b": (1,)}, class_counts=np.array([2.0, 2.0, 2.0, 2.0]),
        sum_sq={"a": 0.0, "b": 0.0},
        positive={"a": np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]), "b": np.ones((4, 1))})
    neurons = analysis.psp_entropy_first_order(stats)
    np.testing.assert_allclose(neurons["per_neuron"]["a"], [0.0, 2.0])
    np.testing.assert_allclose(neurons["per_neuron"]["b"], [4.0])
    assert neurons["overall"] == pytest.approx(2.0) and neurons["aggregate"] == "neurons"
    layers = analysis.psp_entropy_first_order(stats, aggregate="layers")
    assert layers["overall"] == pytest.approx(2.5) and layers["per_layer"] == neurons["per_layer"]
    with pytest.raises(KerasPruneError, match="unknown PSP-entropy aggregate convention 'units'"):
        analysis.psp_entropy_first_order(stats, aggregate="units")


def test_hessian_examples_all_takes_the_whole_training_split(monkeypatch):
    from kerasprune import data

    fake = types.SimpleNamespace(x_train=np.zeros((400, 28, 28, 1), np.uint8), y_train=np.arange(400) % 10,
                                 x_test=np.zeros((20, 28, 28, 1), np.uint8), y_test=np.arange(20) % 10)
    monkeypatch.setattr(data, "load_arrays", lambda *args: fake)  # the training split after validation
    for value in ("all", 0):
        assert AnalysisConfig(dataset="mnist", hessian_examples=value).hessian_examples == "all"
    with pytest.raises(KerasPruneError, match="hessian_examples must be a count or 'all', got 'every'"):
        AnalysisConfig(dataset="mnist", hessian_examples="every")
    with pytest.raises(KerasPruneError, match="hessian_examples must be >= 1, got -3"):
        AnalysisConfig(dataset="mnist", hessian_examples=-3)
    for flag in ("all", "0"):
        args = cli.build_parser().parse_args(["analyze", "--g", "G", "--oneshot", "S", "--dataset", "mnist",
                                              "--out", "o", "--hessian-examples", flag])
        assert args.hessian_examples == "all"
    config = AnalysisConfig.quick(dataset="mnist", hessian_examples="all", max_train_examples=300,
                                  grid_train_examples=100, grid_test_examples=10)
    (hx, hy), (gx, _), _ = compare_module.samples(config)
    assert len(hx) == len(hy) == 300 and len(gx) == 100  # every example of the (cut) training split


def test_conventions_are_recorded_and_key_the_cached_steps():
    default = AnalysisConfig(dataset="mnist")
    assert {k: default.conventions()[k] for k in ("train_loss", "psp_l2", "psp_entropy_aggregate")} == {
        "train_loss": "mean", "psp_l2": "mean", "psp_entropy_aggregate": "neurons"}
    keyed, key = compare_module._keyed, compare_module._key
    base = key(["g"], keyed(default.settings()))
    variants = [AnalysisConfig(dataset="mnist", **fields) for fields in (
        {"train_loss": "per-batch"}, {"train_loss": "per-batch", "loss_batch": 50}, {"psp_l2": "sum-units"},
        {"psp_entropy_aggregate": "layers"}, {"hessian_examples": "all"})]
    keys = [key(["g"], keyed(c.settings())) for c in variants]
    assert len(set(keys + [base])) == len(keys) + 1  # each convention its own parts
    # The mean loss ignores the loss batch: the same parts.
    assert key(["g"], keyed(AnalysisConfig(dataset="mnist", loss_batch=50).settings())) == base
    for fields, message in (({"train_loss": "sum"}, "train_loss must be one of mean, per-batch"),
                            ({"psp_l2": "norm"}, "psp_l2 must be one of mean, sum-units"),
                            ({"psp_entropy_aggregate": "units"}, "psp_entropy_aggregate must be one of neurons"),
                            ({"loss_batch": 0}, "loss_batch must be >= 1")):
        with pytest.raises(KerasPruneError, match=message):
            AnalysisConfig(dataset="mnist", **fields)


@pytest.fixture
def figures(monkeypatch):
    """The figures the plots close, kept open for the test to read."""
    import matplotlib.pyplot as plt

    kept, close = [], plt.close
    monkeypatch.setattr(plt, "close", kept.append)
    yield kept
    for fig in kept:
        close(fig)


def test_eigenvalue_chart_has_a_log_axis_and_falls_back_to_linear_for_values_at_or_below_zero(tmp_path, figures):
    plots.plot_eigenvalues([1.62, 1.52, 1.17], [1.48, 1.38, 1.10], str(tmp_path / "log.png"))
    assert figures[-1].axes[0].get_yscale() == "log"  # log by default, even within one decade
    plots.plot_eigenvalues([1.62, 1.52, 1.17], [1.48, 1.38, 1.10], str(tmp_path / "auto.png"), log="auto")
    assert figures[-1].axes[0].get_yscale() == "linear"
    plots.plot_eigenvalues([1.6, 0.4, -0.2], [1.4, 1.3, 0.0], str(tmp_path / "neg.png"))
    ax = figures[-1].axes[0]
    assert ax.get_yscale() == "linear" and "linear axis: a value is <= 0" in ax.get_title()
    assert (tmp_path / "neg.png").stat().st_size > 1000
    with pytest.raises(KerasPruneError, match="log must be True, False or 'auto'"):
        plots.plot_eigenvalues([1.0], [1.0], str(tmp_path / "x.png"), log="yes")
