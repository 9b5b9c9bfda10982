"""kerasprune.keras3: LOBSTER and the minima analysis on Keras 3 models, checked against Keras 2.

The Keras 2 side (``kerasprune._keras``, ``tf_keras``) and Keras 3 (``keras``) share this process,
as they do in the full suite; that importing ``kerasprune.keras3`` alone leaves Keras 3 in charge is
checked in fresh interpreters. TensorFlow backend here; the JAX and PyTorch runs of the same script
are skipped where those packages are not installed.
"""
import importlib.util
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kerasprune import analysis as analysis2
from kerasprune import data, models
from kerasprune._keras import keras as keras2
from kerasprune._keras import tf
from kerasprune.errors import KerasPruneError
from kerasprune.lobster import Lobster as Lobster2
from kerasprune.pure import points

import keras  # noqa: E402  (Keras 3, beside tf_keras)
from kerasprune.keras3 import Lobster, LobsterPruning  # noqa: E402
from kerasprune.keras3 import analysis  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCCE = keras.losses.SparseCategoricalCrossentropy


def lenet300(seed=0):
    """kerasprune's LeNet-300 (same layer names) in Keras 3."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    for i, units in enumerate((300, 100), start=1):
        x = keras.layers.Dense(units, name=f"fc{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="lenet300")


@pytest.fixture(scope="module")
def mnist():
    """A few hundred real MNIST images as normalised NumPy arrays (the pipelines' preprocessing)."""
    arrays, spec = data.load_arrays("mnist"), data.spec("mnist")

    def norm(x):
        return ((x.astype(np.float32) / 255.0 - spec.mean[0]) / spec.std[0]).astype(np.float32)

    return dict(x_train=norm(arrays.x_train[:400]), y_train=arrays.y_train[:400].astype(np.int64),
                x_val=norm(arrays.x_val[:200]), y_val=arrays.y_val[:200].astype(np.int64),
                x_test=norm(arrays.x_test[:300]), y_test=arrays.y_test[:300].astype(np.int64))


def run_fresh(*code, **env):
    """Runs the ``code`` parts in a fresh interpreter (nothing imported yet, no legacy switch inherited)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "KERAS_BACKEND")}
    environ.update(env, TF_CPP_MIN_LOG_LEVEL="3")
    script = "\n".join(textwrap.dedent(part) for part in code)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environ,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# -- importing ---------------------------------------------------------------------------------------
# A fresh interpreter without TF_USE_LEGACY_KERAS is checked in the backend test at the end.
IMPORT_CHECK = """
    import sys
    import kerasprune.pure.eigen, kerasprune.pure.points, kerasprune.pure.psp, kerasprune.pure.schedule
    assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "kerasprune.pure imported a backend"
    import kerasprune.keras3
    import keras
    assert keras.__version__.startswith("3"), keras.__version__
    assert "kerasprune._keras" not in sys.modules
    """


def test_importing_keras3_keeps_the_legacy_tf_keras_a_user_chose():
    out = run_fresh(IMPORT_CHECK, """
    import tensorflow as tf
    print(tf.keras.layers.Dense.__module__.split(".")[0])
    """, TF_USE_LEGACY_KERAS="1")
    assert out.split() == ["tf_keras"]


# -- the optimizer -----------------------------------------------------------------------------------
def test_one_step_equals_the_hand_computation_and_the_keras2_optimizer():
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 0.5, (4, 3)).astype(np.float32)
    bias = rng.normal(0, 0.1, 3).astype(np.float32)
    x, y = rng.normal(0, 1, (8, 4)).astype(np.float32), rng.integers(0, 3, 8)
    lr, lmbda, threshold = 0.5, 0.1, 0.2
    results = []
    for k, lobster in ((keras, Lobster), (keras2, Lobster2)):
        model = k.Sequential([k.Input((4,)), k.layers.Dense(3, name="d")])
        model.set_weights([kernel, bias])
        opt = lobster(k.optimizers.SGD(lr), lmbda=lmbda)
        model.compile(opt, loss=k.losses.SparseCategoricalCrossentropy(from_logits=True))
        opt.build(model.trainable_variables)
        results.append(opt.prune_below(threshold))
        model.train_on_batch(x, y)
        results.append(model.get_weights())
    assert results[0] == results[2] == int(np.sum(np.abs(kernel) < threshold) + np.sum(np.abs(bias) < threshold)) > 0
    # By hand: the mean cross-entropy's gradient at the masked weights, the SGD step, then LOBSTER.
    masks = [(np.abs(w) >= threshold).astype(np.float64) for w in (kernel, bias)]
    w, b = kernel * masks[0], bias * masks[1]
    logits = x.astype(np.float64) @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    delta = (p - np.eye(3)[y]) / len(y)
    for value, grad, mask, got3, got2 in zip((w, b), (x.T @ delta, delta.sum(0)), masks, results[1], results[3]):
        stepped = value - lr * grad  # lmbda is not multiplied by the lr
        expected = stepped * mask * (1 - lmbda * np.maximum(0, 1 - np.abs(grad)))
        np.testing.assert_allclose(got3, expected, rtol=1e-5, atol=1e-7)
        assert np.all(got3[mask == 0] == 0)
        np.testing.assert_allclose(got3, got2, rtol=2e-7, atol=1e-8)  # Keras 2: float32 rounding at most


def test_lmbda_zero_after_prune_below_is_masked_fine_tuning():
    # The Keras 3 stand-in for TF-MOT's one-shot baselines (docs/keras3.md): cut, then plain SGD steps
    # that never regrow the cut weights, i.e. SGD with the mask applied after every step.
    rng = np.random.default_rng(1)
    weights = [rng.normal(0, 0.5, (4, 3)).astype(np.float32), rng.normal(0, 0.5, 3).astype(np.float32)]
    masks = [(np.abs(w) >= 0.3).astype(np.float32) for w in weights]
    x, y = rng.normal(0, 1, (16, 4)).astype(np.float32), rng.integers(0, 3, 16)
    results = []
    for lobster in (True, False):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
        model.set_weights(weights)
        opt = Lobster(keras.optimizers.SGD(0.1), lmbda=0.0) if lobster else keras.optimizers.SGD(0.1)
        model.compile(opt, loss=SCCE(from_logits=True))
        if lobster:
            opt.build(model.trainable_variables)
            opt.prune_below(0.3)
        else:
            model.set_weights([w * m for w, m in zip(weights, masks)])
        for _ in range(3):
            model.train_on_batch(x, y)
            if not lobster:
                model.set_weights([w * m for w, m in zip(model.get_weights(), masks)])
        results.append(model.get_weights())
    for a, b, m in zip(*results, masks):
        assert np.all(a[m == 0] == 0) and 0 < m.sum() < m.size
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_optimizer_and_callback_configs_round_trip():
    opt = Lobster(keras.optimizers.Adam(0.01, beta_1=0.8), lmbda=3e-4, kinds=("kernel",), prunable=["d/kernel"],
                  rewound_shapes=[[3], [3]], clipnorm=1.0)
    again = Lobster.from_config(opt.get_config())
    assert again.get_config() == opt.get_config()
    assert isinstance(again.base_optimizer, keras.optimizers.Adam) and again.base_optimizer.beta_1 == 0.8
    assert math.isclose(float(again.lmbda.numpy()), 3e-4, rel_tol=1e-6) and again.clipnorm == 1.0
    callback = LobsterPruning(pwe=7, twt=0.1, good_margin=0.02, tolerance=0.01, kinds=("kernel",), verbose=0,
                              threshold_search="conservative", stop_at_pruned=90.0)
    assert LobsterPruning.from_config(callback.get_config()).get_config() == callback.get_config()
    with pytest.raises(ValueError, match="pass them to Lobster"):
        Lobster(keras.optimizers.SGD(0.1, clipnorm=1.0))
    with pytest.raises(ValueError, match="lmbda must be >= 0"):
        Lobster(lmbda=-1.0)


# -- a short run on real MNIST -----------------------------------------------------------------------
def test_lenet300_prunes_at_a_plateau_keeps_pruned_weights_zero_and_round_trips_a_keras_file(mnist, tmp_path):
    m = mnist
    model = lenet300(seed=0)
    opt = Lobster(keras.optimizers.SGD(0.1, momentum=0.5), lmbda=1e-4)
    model.compile(opt, loss=SCCE(from_logits=True), metrics=["accuracy"])
    run_dir = str(tmp_path / "run")
    pruning = LobsterPruning((m["x_val"], m["y_val"]), (m["x_test"], m["y_test"]), pwe=1, run_dir=run_dir, verbose=0)
    # 400 images, momentum 0.5: the validation loss wavers, so it plateaus (pwe 1) within 6 epochs.
    model.fit(m["x_train"], m["y_train"], batch_size=20, epochs=6, validation_data=(m["x_val"], m["y_val"]),
              callbacks=[pruning], verbose=0)
    assert pruning.searches and int(opt.level.numpy()) == len(pruning.searches)

    def masked_zero(optimizer):
        pruned = 0
        for var in optimizer.prunable_variables():
            mask = keras.ops.convert_to_numpy(optimizer.mask_of(var))
            assert np.all(keras.ops.convert_to_numpy(var)[mask == 0] == 0), var.path
            pruned += int(np.sum(mask == 0))
        return pruned

    # Pruned weights stayed zero through the epochs after their pruning (momentum 0.5 included).
    pruned = masked_zero(opt)
    assert pruned > 1000
    rows = points.read_operating_points(run_dir)
    with open(os.path.join(run_dir, points.POINTS_CSV)) as f:
        assert tuple(f.readline().strip().split(",")) == points.COLUMNS
    assert rows == pruning.operating_points and [r["point"] for r in rows] == list(range(len(rows)))
    assert len(rows) == int(opt.level.numpy()) + 1 and rows[-1]["pruned_params"] == pruned
    for row in rows:
        assert 0 <= row["test_error"] < 0.5 and os.path.isfile(os.path.join(run_dir, row["weights"]))
    assert rows[-1]["pruned_params_pct"] > rows[0]["pruned_params_pct"]

    # The .keras file keeps the optimizer: base slots, masks, best weights and the schedule's state.
    path = str(tmp_path / "lenet300.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, Lobster) and loaded.optimizer.get_config() == opt.get_config()
    assert [v.path for v in loaded.optimizer.variables] == [v.path for v in opt.variables]
    for a, b in zip(opt.variables + model.weights, loaded.optimizer.variables + loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), err_msg=a.path)
    loaded.fit(m["x_train"][:100], m["y_train"][:100], batch_size=20, epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations.numpy()) == int(opt.iterations.numpy()) + 5
    assert masked_zero(loaded.optimizer) == pruned


# -- the analysis ------------------------------------------------------------------------------------
def test_psp_entropies_and_top_eigenvalue_equal_those_of_the_same_weights_in_keras2(mnist):
    model2 = models.build("lenet300", seed=0)
    weights = [np.where(np.abs(w) < 0.02, 0.0, w).astype(np.float32) for w in model2.get_weights()]  # pruned
    model2.set_weights(weights)
    model3 = lenet300()
    model3.set_weights(weights)
    x, y = mnist["x_train"][:256], mnist["y_train"][:256]
    options = dict(second_order=True, max_exact_units=150, pair_samples=3000)  # fc1 sampled, fc2 exact
    stats2 = analysis2.psp_statistics(model2, tf.data.Dataset.from_tensor_slices((x, y)).batch(128), **options)
    stats3 = analysis.psp_statistics(model3, (x, y), batch_size=128, **options)
    for name in stats2.layers + [stats2.output_layer]:
        np.testing.assert_array_equal(stats3.positive[name], stats2.positive[name])
    for convention in ("kerasprune", "reference"):
        h2 = analysis2.psp_entropy_first_order(stats2, convention=convention)
        h3 = analysis.psp_entropy_first_order(stats3, convention=convention)
        assert h3["per_layer"] == h2["per_layer"] and h3["overall"] == h2["overall"]
    assert analysis.psp_entropy_second_order(stats3) == analysis2.psp_entropy_second_order(stats2)
    assert analysis.psp_l2(stats3)["overall"] == pytest.approx(analysis2.psp_l2(stats2)["overall"], rel=1e-5)
    assert stats3.loss == pytest.approx(stats2.loss, rel=1e-5) and stats3.error == stats2.error

    top3 = analysis.top_eigenvalues(model3, (x, y), k=1, tol=1e-4, seed=0)
    top2 = analysis2.top_eigenvalues(model2, (x, y), k=1, tol=1e-4, seed=0)
    assert top3.converged and top3.eigenvalues[0] > 0
    assert top3.eigenvalues[0] == pytest.approx(top2.eigenvalues[0], rel=1e-4)
    # Masked: the HVP of a vector is zero on the pruned weights, as Keras 2's.
    vector = [np.ones_like(w) for w in weights]
    hv3 = analysis.hvp(model3, x[:64], y[:64], vector)
    hv2 = analysis2.hvp(model2, x[:64], y[:64], vector)
    for a, b, w in zip(hv3, hv2, weights):
        assert np.all(a[w == 0] == 0)
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_psp_analysis_refuses_hidden_non_relu_activations():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, activation="tanh", name="fused")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    with pytest.raises(KerasPruneError, match="'fused'.*non-ReLU"):
        analysis.relu_layers(model)
    relu_op = keras.Model(inputs, keras.layers.Dense(2)(keras.ops.relu(keras.layers.Dense(3, name="d")(inputs))))
    assert [type(op).__name__ for op in analysis.relu_layers(relu_op)] == ["Relu"]


# -- other backends ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_fresh_import_lobster_step_and_psp_entropy_on_each_installed_backend(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    out = run_fresh(IMPORT_CHECK, """
    if keras.backend.backend() == "tensorflow":  # tf.keras stays Keras 3: no legacy Keras was chosen
        import tensorflow as tf
        assert tf.keras.layers.Dense.__module__.startswith("keras."), tf.keras.layers.Dense.__module__
    """, """
        import numpy as np
        import keras
        from kerasprune.keras3 import Lobster, analysis
        from kerasprune.errors import KerasPruneError

        rng = np.random.default_rng(0)
        kernel = rng.normal(0, 0.5, (4, 3)).astype("float32")
        x, y = rng.normal(0, 1, (8, 4)).astype("float32"), rng.integers(0, 3, 8)
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(3, use_bias=False, name="d")(keras.layers.ReLU()(inputs)))
        model.set_weights([kernel])
        opt = Lobster(keras.optimizers.SGD(0.5), lmbda=0.1)
        model.compile(opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        opt.build(model.trainable_variables)
        opt.prune_below(0.2)
        model.train_on_batch(x, y)
        mask = (np.abs(kernel) >= 0.2).astype(np.float64)
        h = np.maximum(x, 0).astype(np.float64)
        logits = h @ (kernel * mask)
        p = np.exp(logits - logits.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
        g = h.T @ ((p - np.eye(3)[y]) / len(y))
        expected = (kernel * mask - 0.5 * g) * mask * (1 - 0.1 * np.maximum(0, 1 - np.abs(g)))
        np.testing.assert_allclose(model.get_weights()[0], expected, rtol=1e-5, atol=1e-7)
        stats = analysis.psp_statistics(model, (x, y))
        p_on = np.array([(x[y == c] > 0).mean(0) for c in range(3)])  # the PSPs are the inputs here
        plogp = lambda q: -q * np.log2(np.where(q > 0, q, 1))
        h_n = (plogp(p_on) + plogp(1 - p_on)).sum(0)
        assert abs(analysis.psp_entropy_first_order(stats)["overall"] - h_n.mean()) < 1e-12
        try:
            value = analysis.top_eigenvalues(model, (x, y), k=1).eigenvalues[0]
        except KerasPruneError:
            value = "no-hvp"
        print(keras.backend.backend(), value)
        """, KERAS_BACKEND=backend)
    name, value = out.split()
    assert name == backend and (value == "no-hvp") == (backend != "tensorflow")
