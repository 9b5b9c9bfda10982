"""SavedModel export of pruned models: stripping, round trips without kerasprune, the export command."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kerasprune import cli, export, models, runs, sparsity, training
from kerasprune._keras import keras, tf, tfmot
from kerasprune.errors import KerasPruneError
from kerasprune.pure import points


def prune(weights, fractions, dead_units):
    """Magnitude pruning of the kernels plus whole fc1/fc2 neurons cut (LOBSTER-like)."""
    weights = [w.copy() for w in weights]
    for i, fraction in fractions.items():
        weights[i][np.abs(weights[i]) < np.quantile(np.abs(weights[i]), fraction)] = 0
    weights[0][:, np.argsort(np.abs(weights[0]).sum(0))[:dead_units[0]]] = 0
    weights[1][np.all(weights[0] == 0, axis=0)] = 0  # their biases are pruned too
    weights[2][:, np.argsort(np.abs(weights[2]).sum(0))[:dead_units[1]]] = 0
    return weights


@pytest.fixture(scope="module")
def lobster_run(tmp_path_factory, mnist_small):
    """A run folder in the LOBSTER contract format: two magnitude-pruned LeNet-300 operating points."""
    run_dir = tmp_path_factory.mktemp("lobster_lenet300")
    model = models.build("lenet300", seed=0)
    training.compile_model(model, training.make_optimizer("sgd", lr=0.1))
    model.fit(mnist_small.train, epochs=1, verbose=0)
    dense = model.get_weights()
    os.makedirs(run_dir / "points")
    rows = []
    for point, (fractions, dead) in enumerate([({0: 0.5}, (30, 10)), ({0: 0.8, 2: 0.5}, (100, 30))]):
        model.set_weights(prune(dense, fractions, dead))
        model.save_weights(str(run_dir / "points" / f"point_{point:03d}.weights.h5"))
        rep = sparsity.report(model)
        rows.append({"point": point, "pruned_params_pct": rep.pruned_params_pct,
                     "pruned_neurons_pct": rep.pruned_neurons_pct, "val_error": 0.1, "val_loss": 0.3,
                     "test_error": 0.1, "test_loss": 0.3, "epoch": point,
                     "weights": f"points/point_{point:03d}.weights.h5"})
    points.write_points(str(run_dir), rows)
    (run_dir / "config.json").write_text(json.dumps({
        "model": "lenet300", "dataset": "mnist", "seed": 0, "batch_size": 100, "lr": 0.1, "momentum": 0.0,
        "data_dir": None, "val_fraction": 0.1, "split_seed": 0, "max_train_examples": 2000}))
    return run_dir


@pytest.fixture(scope="module")
def exported(lobster_run, tmp_path_factory):
    export_dir = str(tmp_path_factory.mktemp("exports"))
    code = cli.main(["export", str(lobster_run), "--export-dir", export_dir, "--points", "1", "--tflite",
                     "--max-test-examples", "1000"])
    assert code == 0
    export.export_run(str(lobster_run), export_dir, points="0", evaluate=False, verbose=False)
    return export_dir


def report_of(lobster_run, export_dir, tag):
    path = runs.export_path(str(lobster_run), export_dir, tag) + export.REPORT_SUFFIX
    with open(path) as f:
        return json.load(f)


def test_export_writes_sparse_compact_and_tflite_models_of_operating_points(lobster_run, exported, mnist_small):
    for point in (0, 1):
        tag = f"point_{point:03d}"
        rep = report_of(lobster_run, exported, tag)
        base = runs.export_path(str(lobster_run), exported, tag)
        for path in (base, base + "_compact"):
            assert os.path.isfile(os.path.join(path, "saved_model.pb"))
            assert os.path.isfile(path + ".tflite") == (point == 1)
        model = models.build("lenet300")
        model.load_weights(str(lobster_run / "points" / f"{tag}.weights.h5"))
        weights = model.get_weights()
        dead = sparsity.pruned_neurons(model)
        assert rep["sparse"]["params"] == 266610
        assert rep["sparse"]["nonzero_params"] == sum(int(np.count_nonzero(w)) for w in weights)
        k1, k2 = 300 - dead["fc1"].sum(), 100 - dead["fc2"].sum()
        assert rep["compaction"]["units_after"] == {"fc1": k1, "fc2": k2, "logits": 10}
        live = np.any(weights[0][:, ~dead["fc1"]] != 0, axis=1).reshape(28, 28)
        rows, cols = np.flatnonzero(live.any(1)), np.flatnonzero(live.any(0))
        pixels = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)  # the input is cropped to these
        assert rep["compact"]["params"] == pixels * k1 + k1 + k1 * k2 + k2 + k2 * 10 + 10
        assert rep["compact"]["pruned_neurons_pct"] == 0  # nothing removable is left
        assert rep["compact"]["saved_model_gzip_bytes"] < rep["sparse"]["saved_model_gzip_bytes"]
        if point == 0:
            assert "evaluation" not in rep and rep["sparse"]["tflite_bytes"] is None
            continue
        assert rep["compact"]["tflite_bytes"] < rep["sparse"]["tflite_bytes"]
        ev = rep["evaluation"]
        assert ev["test_examples"] == 1000
        assert ev["compact_test_accuracy"] == ev["sparse_test_accuracy"]
        assert ev["max_abs_logit_difference"] < 1e-4 and ev["same_predictions"]
        # The exported accuracy is the accuracy of the weights in the run folder.
        labels = np.concatenate([y.numpy() for _, y in mnist_small.test])
        x = np.concatenate([x.numpy() for x, _ in mnist_small.test])
        assert ev["sparse_test_accuracy"] == pytest.approx(np.mean(model(x).numpy().argmax(-1) == labels))
    # Sparser point, smaller compressed files.
    r0, r1 = (report_of(lobster_run, exported, f"point_{p:03d}") for p in (0, 1))
    assert r1["sparse"]["saved_model_gzip_bytes"] < r0["sparse"]["saved_model_gzip_bytes"]
    assert r1["sparse"]["saved_model_bytes"] == pytest.approx(r0["sparse"]["saved_model_bytes"], rel=0.02)


def test_exported_saved_models_load_without_kerasprune_and_give_the_same_outputs(
        lobster_run, exported, mnist_small, tmp_path):
    x = np.concatenate([x.numpy() for x, _ in mnist_small.test])[:200]
    np.save(tmp_path / "x.npy", x)
    dirs = {k: runs.export_path(str(lobster_run), exported, "point_001" + k) for k in ("", "_compact")}
    script = textwrap.dedent(f"""
        import importlib.abc, json, sys
        import numpy as np
        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "kerasprune":
                    raise ImportError("kerasprune is hidden")
        sys.meta_path.insert(0, Hide())
        sys.path = [p for p in sys.path if p not in ("", {os.getcwd()!r})]
        try:
            import kerasprune
            sys.exit("kerasprune is importable")
        except ImportError:
            pass
        import tensorflow as tf, tf_keras
        x = np.load({str(tmp_path / "x.npy")!r})
        for key, path in {dirs!r}.items():
            raw = tf.saved_model.load(path).signatures["serving_default"](image=tf.constant(x))["logits"]
            model = tf_keras.models.load_model(path)
            np.save({str(tmp_path)!r} + "/raw" + key + ".npy", raw.numpy())
            np.save({str(tmp_path)!r} + "/keras" + key + ".npy", model(x).numpy())
            assert "kerasprune" not in sys.modules
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    model = models.build("lenet300")
    model.load_weights(str(lobster_run / "points" / "point_001.weights.h5"))
    expected = model(x).numpy()
    for key in ("", "_compact"):
        for how in ("raw", "keras"):
            np.testing.assert_allclose(np.load(tmp_path / f"{how}{key}.npy"), expected, rtol=1e-4, atol=1e-4)


def test_rerunning_the_export_skips_finished_models(lobster_run, exported, capsys):
    assert cli.main(["export", str(lobster_run), "--export-dir", exported, "--points", "1", "--no-eval"]) == 0
    assert "point_001: already exported" in capsys.readouterr().out


def test_unknown_operating_point_is_a_one_line_error(lobster_run, tmp_path, capsys):
    assert cli.main(["export", str(lobster_run), "--export-dir", str(tmp_path), "--points", "7"]) == 2
    assert "has no finished operating point [7]" in capsys.readouterr().err


def test_the_level_lobster_is_still_in_is_not_exported_and_tags_must_differ(lobster_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(lobster_run, run)
    with open(run / "operating_points.csv") as f:
        lines = f.read().splitlines()
    cells = lines[-1].split(",")
    cells[points.COLUMNS.index("test_error")] = cells[points.COLUMNS.index("test_loss")] = ""
    with open(run / "operating_points.csv", "w") as f:
        f.write("\n".join(lines[:-1] + [",".join(cells)]) + "\n")
    assert [x.tag for x in export.run_sources(str(run), "last")] == ["point_000"]
    with pytest.raises(KerasPruneError, match="no finished operating point \\[1\\]"):
        export.run_sources(str(run), "1")
    with pytest.raises(KerasPruneError, match="points must be all, last or"):
        export.run_sources(str(run), "first")
    with pytest.raises(KerasPruneError, match="same tag \\['w'\\]"):
        export.run_sources(str(run), weights=[str(tmp_path / "a" / "w.weights.h5"), str(tmp_path / "w.h5")])


def test_strip_folds_tfmot_masks_and_leaves_the_wrapped_model_untouched():
    model = models.build("lenet300", hidden=(8, 5), seed=0)
    wrapped = tfmot().sparsity.keras.prune_low_magnitude(model)
    wrapper = next(l for l in wrapped.layers if hasattr(l, "pruning_vars") and l.layer.name == "fc1")
    kernel, mask, _ = wrapper.pruning_vars[0]
    m = (np.arange(kernel.shape[0] * kernel.shape[1]).reshape(kernel.shape) % 3 != 0).astype(np.float32)
    mask.assign(m)
    before = kernel.numpy().copy()
    plain = export.strip(wrapped)
    assert not export.has_wrappers(plain)
    np.testing.assert_array_equal(plain.get_layer("fc1").kernel.numpy(), before * m)
    np.testing.assert_array_equal(kernel.numpy(), before)  # the wrapped model keeps its state
    assert plain.get_layer("fc1").kernel is not kernel


def test_oneshot_run_final_weights_and_tfmot_wrapped_weight_files_export(tmp_path, mnist_small):
    run_dir = tmp_path / "magnitude_oneshot"
    os.makedirs(run_dir)
    (run_dir / "config.json").write_text(json.dumps({"model": "lenet300", "dataset": "mnist"}))
    model = models.build("lenet300", seed=1)
    weights = prune(model.get_weights(), {0: 0.9, 2: 0.9}, (0, 0))
    model.set_weights(weights)
    model.save_weights(str(run_dir / "final.weights.h5"))
    wrapped = tfmot().sparsity.keras.prune_low_magnitude(models.build("lenet300", seed=1))
    for layer in wrapped.layers:
        if hasattr(layer, "pruning_vars"):
            layer.layer.set_weights(model.get_layer(layer.layer.name).get_weights())
    wrapped.save_weights(str(tmp_path / "wrapped.weights.h5"))  # TF-MOT layout: masks, steps, ...
    export_dir = str(tmp_path / "exports")
    results = export.export_run(str(run_dir), export_dir, evaluate=False, verbose=False)
    assert list(results) == ["final"]
    results = export.export_run(str(run_dir), export_dir, weights=[str(tmp_path / "wrapped.weights.h5")],
                                compact=False, evaluate=False, verbose=False)
    x = np.concatenate([x.numpy() for x, _ in mnist_small.test])[:100]
    for tag in ("final", "wrapped"):
        loaded = keras.models.load_model(runs.export_path(str(run_dir), export_dir, tag))
        np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    assert results["wrapped"]["sparse"]["nonzero_params"] == sum(int(np.count_nonzero(w)) for w in weights)


def test_a_training_run_exports_its_best_checkpoint(tmp_path, mnist_small):
    run_dir = str(tmp_path / "dense")
    training.train(training.TrainConfig(model="lenet300", dataset="mnist", epochs=1, max_train_examples=500,
                                        max_test_examples=100), run_dir, verbose=0)
    results = export.export_run(run_dir, str(tmp_path / "exports"), compact=False, evaluate=False, verbose=False)
    assert list(results) == ["best"]
    best = models.build("lenet300")
    best.load_weights(os.path.join(run_dir, runs.BEST_WEIGHTS))
    x = np.concatenate([x.numpy() for x, _ in mnist_small.test])[:100]
    loaded = export.serving_logits(results["best"]["saved_model"])
    np.testing.assert_allclose(loaded(x), best(x).numpy(), rtol=1e-5, atol=1e-5)
    assert "compact" not in results["best"]


def test_gzip_size_shrinks_with_sparsity_and_saved_model_size_does_not(tmp_path):
    model = models.build("lenet300", seed=0)
    dense_dir = export.save(model, str(tmp_path / "dense"))
    model.set_weights(prune(model.get_weights(), {0: 0.95, 2: 0.95, 4: 0.95}, (0, 0)))
    sparse_dir = export.save(model, str(tmp_path / "sparse"))
    dense, sparse = (export.size_report(model, d) for d in (dense_dir, sparse_dir))
    assert sparse.saved_model_bytes == pytest.approx(dense.saved_model_bytes, rel=0.01)
    assert sparse.saved_model_gzip_bytes < dense.saved_model_gzip_bytes / 4
    assert export.gzip_bytes(sparse_dir) == export.gzip_bytes(sparse_dir)  # content-only, deterministic


def test_export_refuses_layers_that_need_custom_code(tmp_path):
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2)(Doubler(name="doubler")(inputs)))
    with pytest.raises(KerasPruneError, match="doubler is a Doubler .* not a standard Keras layer"):
        export.save(model, str(tmp_path / "m"))
