"""The plane through G and 1-S, grid evaluation in place, and the ``kerasprune analyze`` command.

G and 1-S are small LeNet-300s (784-64-32-10, to keep tests fast) trained on a real MNIST subset, magnitude-pruned two ways (layer-wise and
global, 90%), fine-tuned with their masks fixed and exported as SavedModels.
"""
import json
import os

import numpy as np
import pytest

from kerasprune._keras import keras, tf
from kerasprune import analysis, cli, data, models, training
from kerasprune.analysis import landscape, plots
from kerasprune.errors import KerasPruneError

# analysis.json's conventions of the units at their defaults (docs/analysis.md, "The paper's units")
DEFAULT_UNITS = {"train_loss": "mean", "psp_l2": "mean", "psp_entropy_aggregate": "neurons"}


class KeepMask(keras.callbacks.Callback):
    """Re-zeroes pruned kernel entries after every step (a fixed-mask fine-tuning)."""

    def on_train_begin(self, logs=None):
        self.masks = [(v, tf.constant(v.numpy() != 0, tf.float32)) for v in self.model.trainable_variables
                      if len(v.shape) > 1]

    def on_train_batch_end(self, batch, logs=None):
        for v, m in self.masks:
            v.assign(v * m)


def magnitude_prune(model, fraction, scope):
    kernels = [v for v in model.trainable_variables if len(v.shape) > 1]
    if scope == "global":
        threshold = np.quantile(np.abs(np.concatenate([k.numpy().ravel() for k in kernels])), fraction)
    for k in kernels:
        w = k.numpy()
        t = threshold if scope == "global" else np.quantile(np.abs(w), fraction)
        k.assign(np.where(np.abs(w) > t, w, 0.0))


@pytest.fixture(scope="module")
def solutions(tmp_path_factory):
    """Paths of the G and 1-S SavedModels and the data they were trained on."""
    root = tmp_path_factory.mktemp("solutions")
    splits = data.load("mnist", max_train_examples=2000, max_test_examples=500, batch_size=50)
    model = models.build("lenet300", hidden=(64, 32), seed=0)
    training.compile_model(model, training.make_optimizer("sgd", 0.1))
    model.fit(splits.train, epochs=4, verbose=0)  # 144 steps
    dense = model.get_weights()
    out = {}
    for name, scope in (("g", "layer"), ("oneshot", "global")):
        model.set_weights(dense)
        magnitude_prune(model, 0.9, scope)
        training.compile_model(model, training.make_optimizer("sgd", 0.05))
        model.fit(splits.train, epochs=1, verbose=0, callbacks=[KeepMask()])
        out[name] = training.export_saved_model(model, str(root / name))
    out["splits"] = splits
    return out


def load(path):
    return keras.models.load_model(path, compile=False)


def flat(weights):
    return np.concatenate([np.ravel(w) for w in weights])


def test_plane_passes_through_g_and_oneshot_with_an_orthogonal_equal_norm_direction(solutions):
    g, s = load(solutions["g"]), load(solutions["oneshot"])
    plane = landscape.make_plane(g, s, seed=1)
    np.testing.assert_allclose(flat(plane.point(0, 0)), flat(g.get_weights()))
    np.testing.assert_allclose(flat(plane.point(1, 0)), flat(s.get_weights()), atol=1e-6)
    norms = plane.norms()
    assert norms["d2"] == pytest.approx(norms["d1"], rel=1e-9)
    assert abs(norms["d1_dot_d2"]) < 1e-9 * norms["d1"] ** 2
    again = landscape.make_plane(g, s, seed=1)
    np.testing.assert_array_equal(flat(again.d2), flat(plane.d2))
    assert not np.allclose(flat(landscape.make_plane(g, s, seed=2).d2), flat(plane.d2))


def test_union_support_keeps_the_random_direction_off_weights_pruned_in_both(solutions):
    g, s = load(solutions["g"]), load(solutions["oneshot"])
    plane = landscape.make_plane(g, s, seed=0, support="union")
    for wg, ws, d2 in zip(g.get_weights(), s.get_weights(), plane.d2):
        if wg.ndim > 1:
            both_zero = (wg == 0) & (ws == 0)
            assert both_zero.any()
            np.testing.assert_array_equal(d2[both_zero], 0.0)
            assert np.all(d2[~both_zero] != 0)
    np.testing.assert_array_equal(flat(landscape.make_plane(g, s, seed=0).d2), flat(plane.d2))  # the default
    assert np.all(flat(landscape.make_plane(g, s, seed=0, support="all").d2) != 0)


def test_filter_normalised_direction_has_no_bias_component(solutions):
    g, s = load(solutions["g"]), load(solutions["oneshot"])
    plane = landscape.make_plane(g, s, seed=0, filter_normalize=True)
    for w, d2 in zip(g.get_weights(), plane.d2):
        if w.ndim == 1:
            np.testing.assert_array_equal(d2, 0.0)
    assert plane.norms()["d2"] == pytest.approx(plane.norms()["d1"])


def test_different_architectures_are_refused(solutions):
    g = load(solutions["g"])
    other = models.build("lenet300", hidden=(20, 10), seed=0)
    with pytest.raises(KerasPruneError, match="same architecture"):
        landscape.make_plane(g, other)


def test_batch_norm_statistics_follow_the_first_coordinate_clipped():
    def bn_model(value):
        inputs = keras.Input((3,))
        x = keras.layers.Dense(2, bias_initializer="ones")(inputs)
        x = keras.layers.BatchNormalization()(x)
        m = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.ReLU()(x)))
        m.layers[2].moving_variance.assign([value, value])
        return m

    a, b = bn_model(1.0), bn_model(3.0)
    plane = landscape.make_plane(a, b, seed=0)
    names = [w.name for w in a.weights]
    var_index = next(i for i, n in enumerate(names) if "moving_variance" in n)
    for alpha, expected in ((-0.5, 1.0), (0.5, 2.0), (1.5, 3.0)):
        np.testing.assert_allclose(plane.point(alpha, 0.7)[var_index], [expected, expected])


def test_grid_sets_weights_in_place_and_matches_direct_evaluation_at_g_and_oneshot(solutions, tmp_path):
    g, s = load(solutions["g"]), load(solutions["oneshot"])
    train, test = solutions["splits"].validation, solutions["splits"].test
    before = [w.copy() for w in g.get_weights()]
    plane = landscape.make_plane(g, s, seed=0)
    maps = landscape.evaluate_grid(g, plane, [0.0, 1.0], [0.0], train, test, pair_samples=200,
                                   state_path=str(tmp_path / "grid.npz"))
    for j, model in enumerate((load(solutions["g"]), s)):
        stats = analysis.psp_statistics(model, train, second_order=True, pair_samples=200)
        training.compile_model(model, training.make_optimizer("sgd", 0.1))
        expected = training.evaluate(model, train)
        assert maps["train_loss"][0, j] == pytest.approx(expected["loss"], rel=1e-4)
        assert maps["psp_l2"][0, j] == pytest.approx(analysis.psp_l2(stats)["overall"], rel=1e-4)
        assert maps["psp_entropy_1"][0, j] == pytest.approx(
            analysis.psp_entropy_first_order(stats)["overall"], rel=1e-4)
        assert maps["psp_entropy_2"][0, j] == pytest.approx(
            analysis.psp_entropy_second_order(stats)["overall"], rel=1e-4)
        err = 1 - training.evaluate(model, test)["accuracy"]
        assert maps["test_error"][0, j] == pytest.approx(err, abs=1e-6)
    for w0, w in zip(before, g.get_weights()):
        np.testing.assert_array_equal(w0, w)  # restored after the grid


def test_grid_resumes_from_its_state_without_recomputing(solutions, tmp_path, monkeypatch):
    g, s = load(solutions["g"]), load(solutions["oneshot"])
    train, test = solutions["splits"].validation, solutions["splits"].test
    plane = landscape.make_plane(g, s, seed=0)
    state = str(tmp_path / "grid.npz")
    first = landscape.evaluate_grid(g, plane, [0.0, 0.5], [-0.5, 0.5], train, test, second_order=False,
                                    state_path=state)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished point was evaluated again")

    monkeypatch.setattr(landscape, "evaluate_point", refuse)
    again = landscape.evaluate_grid(g, plane, [0.0, 0.5], [-0.5, 0.5], train, test, second_order=False,
                                    state_path=state)
    np.testing.assert_array_equal(first["train_loss"], again["train_loss"])


def test_plots_write_pngs(tmp_path):
    a, b = np.linspace(-0.5, 1.5, 5), np.linspace(-1, 1, 4)
    values = np.exp(np.add.outer(b ** 2, (a - 0.5) ** 2))
    assert os.path.getsize(plots.plot_map(a, b, values, "train_loss", str(tmp_path / "m.png"))) > 1000
    assert os.path.getsize(plots.plot_eigenvalues([5, 4, 3], [2, 1, 0.5], str(tmp_path / "e.png"))) > 1000


def test_analyze_command_writes_the_analysis_and_resumes(solutions, tmp_path, capsys):
    out = tmp_path / "analysis"
    argv = ["analyze", "--g", solutions["g"], "--oneshot", solutions["oneshot"], "--dataset", "mnist",
            "--out", str(out), "--quick", "--grid", "3", "--hessian-examples", "200", "--grid-train-examples",
            "200", "--grid-test-examples", "200", "--max-train-examples", "2000", "--eigen-method", "both",
            "--trace", "--trace-max-iter", "12"]
    assert cli.main(argv) == 0
    result = json.loads((out / "analysis.json").read_text())
    for key in ("hessian_top5", "psp_l2", "psp_entropy_1", "psp_entropy_2"):
        assert set(result[key]) == {"g", "oneshot"}
    assert result["conventions"] == {"psp_entropy": "kerasprune", "psp_entropy_2": "kerasprune",
                                     "support": "union", "eigen_method": "lanczos", "hessian_parameters": "unpruned",
                                     **DEFAULT_UNITS}
    assert result["warnings"] == [] and "WARNING" not in capsys.readouterr().out
    for name in ("g", "oneshot"):
        top = result["hessian_top5"][name]
        assert len(top) == 5 and top == sorted(top, reverse=True)
        power = result["hessian"][name]["power"]["eigenvalues"]
        np.testing.assert_allclose(power[:2], top[:2], rtol=0.02)
        assert result["hessian"][name]["lanczos"]["hvps"] > 0
        trace = result["hessian"][name]["trace"]
        assert 10 <= trace["hvps"] <= 12 and np.isfinite(trace["trace"]) and trace["stderr"] > 0
    maps = result["grid"]["maps"]
    assert set(maps) == set(landscape.METRICS)
    assert np.isfinite(np.asarray(maps["train_loss"])).all() and np.shape(maps["train_loss"]) == (3, 3)
    for png in result["figures"]:
        assert (out / png).stat().st_size > 1000
    assert "eigenvalues.png" in result["figures"]
    assert list((out / "tensorboard" / "g").glob("events.out.tfevents.*"))
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir()}
    assert cli.main(argv) == 0  # resumes: every finished step is read back, not recomputed
    assert {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir()} == mtimes
    again = json.loads((out / "analysis.json").read_text())
    assert again["hessian_top5"] == result["hessian_top5"]


def test_analyze_reference_entropy_arpack_and_a_warning_for_a_top_k_that_did_not_converge(solutions, tmp_path,
                                                                                           capsys, monkeypatch):
    from kerasprune.commands import analyze

    x, y = next(iter(solutions["splits"].validation.unbatch().batch(100)))  # skips reading MNIST again
    xy = (x.numpy(), y.numpy())
    monkeypatch.setattr(analyze, "_samples", lambda settings, data_dir: (xy, xy, xy))
    out = tmp_path / "analysis"
    argv = ["analyze", "--g", solutions["g"], "--oneshot", solutions["oneshot"], "--dataset", "mnist",
            "--out", str(out), "--grid", "2", "--pair-samples", "50", "--psp-entropy", "reference",
            "--support", "all", "--eigen-method", "all", "--top-k", "3", "--max-iter", "2"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "analysis.json").read_text())
    assert result["conventions"] == {"psp_entropy": "reference", "psp_entropy_2": "kerasprune", "support": "all",
                                     "eigen_method": "lanczos", "hessian_parameters": "unpruned",
                                     **DEFAULT_UNITS}
    for name in ("g", "oneshot"):  # 2 HVPs cannot meet tol 1e-3; ARPACK's one restart may
        for method in ("lanczos", "power"):
            assert not result["hessian"][name][method]["converged"]
            line = f"{name}: {method} top-3 Hessian eigenvalues did not converge"
            assert sum(w.startswith(line) for w in result["warnings"]) == 1
            assert f"WARNING: {line}" in printed
        entropy = result["psp_entropy_1"][name]
        assert entropy["convention"] == "reference" and set(entropy["per_layer"]) == {"relu1", "relu2", "logits"}
    assert len(result["warnings"]) == printed.count("WARNING: ")
    g = load(solutions["g"])  # the map's entropy uses the same convention
    train, test = solutions["splits"].validation, solutions["splits"].test
    point = landscape.evaluate_point(analysis.psp_model(g), train, test, second_order=False,
                                     psp_convention="reference")
    stats = analysis.psp_statistics(g, train)
    assert point["psp_entropy_1"] == pytest.approx(
        analysis.psp_entropy_first_order(stats, convention="reference")["overall"], rel=1e-9)


def test_analyze_records_the_unit_conventions_and_takes_the_hessian_on_the_whole_split(solutions, tmp_path,
                                                                                      monkeypatch):
    from kerasprune.commands import analyze

    x, y = next(iter(solutions["splits"].validation.unbatch().batch(100)))  # skips reading MNIST again
    xy, configs = (x.numpy(), y.numpy()), []
    monkeypatch.setattr(analyze, "_samples", lambda config, data_dir: configs.append(config) or (xy, xy, xy))
    out = tmp_path / "analysis"
    argv = ["analyze", "--g", solutions["g"], "--oneshot", solutions["oneshot"], "--dataset", "mnist",
            "--out", str(out), "--quick", "--grid", "2", "--hessian-examples", "all", "--pair-samples", "20",
            "--top-k", "2", "--train-loss", "per-batch", "--loss-batch", "40", "--psp-l2", "sum-units",
            "--psp-entropy-aggregate", "layers"]
    assert cli.main(argv) == 0
    assert configs[0].hessian_examples == "all"  # samples() then takes the whole split (test_analysis_conventions)
    result = json.loads((out / "analysis.json").read_text())
    assert result["conventions"] == {"psp_entropy": "kerasprune", "psp_entropy_2": "kerasprune", "support": "union",
                                     "eigen_method": "lanczos", "hessian_parameters": "unpruned",
                                     "train_loss": "per-batch", "psp_l2": "sum-units",
                                     "psp_entropy_aggregate": "layers"}
    assert (result["settings"]["hessian_examples"], result["settings"]["loss_batch"]) == ("all", 40)
    for name in ("g", "oneshot"):
        assert result["hessian"][name]["examples"] == 100
        l2 = result["psp_l2"][name]
        assert set(l2["per_layer"]) == {"relu1", "relu2", "logits"}
        assert l2["overall"] == pytest.approx(sum(l2["per_layer"].values()))
        entropy = result["psp_entropy_1"][name]
        assert entropy["overall"] == pytest.approx(np.mean(list(entropy["per_layer"].values())))
    losses = keras.losses.sparse_categorical_crossentropy(xy[1], load(solutions["g"])(xy[0]), from_logits=True)
    expected = sum(losses.numpy()[i:i + 40].mean() for i in (0, 40, 80)) / 100  # batches of 40, 40 and 20
    assert result["performance"]["g"]["train_loss"] == pytest.approx(expected, rel=1e-5)
    assert np.isfinite(np.asarray(result["grid"]["maps"]["train_loss"])).all()


def test_analyze_reads_run_folders_and_sweep_exports(solutions, tmp_path):
    from kerasprune.commands import analyze

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"saved_model": solutions["g"]}))
    assert analyze.resolve_model_path(str(run)) == solutions["g"]
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "exports.json").write_text(json.dumps({"g": solutions["g"], "oneshot": solutions["oneshot"]}))
    assert analyze.resolve_sweep(str(sweep)) == (solutions["g"], solutions["oneshot"])
    with pytest.raises(KerasPruneError, match="neither a SavedModel nor a run folder"):
        analyze.resolve_model_path(str(tmp_path))
