"""HVPs and eigen-solvers against the exact Hessian (a Jacobian of the gradient) on tiny models."""
import warnings

import numpy as np
import pytest

from kerasprune._keras import keras, tf
from kerasprune import analysis, data
from kerasprune.errors import KerasPruneError


@pytest.fixture(scope="module")
def digits():
    """60 real MNIST images, average-pooled to 7x7 so exact Hessians stay tiny."""
    splits = data.load("mnist", max_train_examples=60, val_fraction=0.0, batch_size=60)
    x, y = next(iter(splits.train))
    return tf.nn.avg_pool2d(x, 4, 4, "VALID").numpy(), y.numpy()


def tiny_mlp(seed=0, prune=True):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((7, 7, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(3, name="fc"), keras.layers.ReLU(),
                              keras.layers.Dense(10, name="logits")])
    if prune:  # zero every other weight of the hidden kernel, and one bias
        k = model.get_layer("fc").kernel
        k.assign(k.numpy() * (np.arange(k.shape[0] * 3).reshape(k.shape) % 2))
        model.get_layer("fc").bias.assign([0.1, 0.0, -0.1])
        model.get_layer("logits").bias.assign(np.linspace(-0.5, 0.5, 10))  # nonzero: not pruned
    return model


def exact_hessian(model, x, y):
    variables = model.trainable_variables
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(x), from_logits=True))
        grad = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(loss, variables)], 0)
    jac = outer.jacobian(grad, variables)
    return np.concatenate([j.numpy().reshape(grad.shape[0], -1) for j in jac], axis=1).astype(np.float64)


def test_hvp_equals_the_exact_hessian_times_v(digits):
    x, y = digits
    model = tiny_mlp(prune=False)
    hessian = exact_hessian(model, x, y)
    op = analysis.Hessian(model, (x, y), masked=False, batch_size=17)  # batching must not matter
    v = np.random.default_rng(0).standard_normal(op.dim)
    np.testing.assert_allclose(op.hvp_flat(v), hessian @ v, rtol=1e-4, atol=1e-5)
    vector = op.unflatten(v)
    got = analysis.hvp(model, x, y, vector, masked=False)
    np.testing.assert_allclose(op.flatten(got), hessian @ v, rtol=1e-4, atol=1e-5)


def pruned_mlp_hessian(x, y):
    """A pruned tiny MLP, its exact Hessian, the masked HVP operator and the operator's free entries."""
    model = tiny_mlp(prune=True)
    op = analysis.Hessian(model, (x, y))
    return model, exact_hessian(model, x, y), op, op.mask_flat.astype(bool)


def test_masked_hvp_ignores_pruned_entries(digits):
    x, y = digits
    model, hessian, op, free = pruned_mlp_hessian(x, y)
    kernel = model.get_layer("fc").kernel.numpy()
    assert op.free == op.dim - np.sum(kernel == 0) - 1  # one bias is zero too
    v = np.random.default_rng(1).standard_normal(op.dim)
    got = op.hvp_flat(v)
    np.testing.assert_array_equal(got[~free], 0.0)
    np.testing.assert_allclose(got[free], hessian[np.ix_(free, free)] @ v[free], rtol=1e-4, atol=1e-5)
    unmasked = analysis.Hessian(model, (x, y), masked=False)
    assert unmasked.free == unmasked.dim


@pytest.mark.parametrize("method, options", [("lanczos", {"seed": 0}), ("arpack", {"max_iter": 500})])
def test_top_eigenvalues_equal_eigh_of_the_masked_hessian(digits, method, options):
    x, y = digits
    model, hessian, op, free = pruned_mlp_hessian(x, y)
    expected = np.linalg.eigvalsh(hessian[np.ix_(free, free)])[::-1][:5]
    result = analysis.top_eigenvalues(op, k=5, method=method, tol=1e-6, **options)
    assert result.converged
    np.testing.assert_allclose(result.eigenvalues, expected, rtol=1e-4)
    if method == "lanczos":  # the hand-written solver: its HVP count and eigenvectors too
        assert result.hvps <= op.free and result.hvps == op.num_hvps
        assert list(result.eigenvalues) == sorted(result.eigenvalues, reverse=True)
        assert np.all(result.eigenvectors[:, ~free] == 0)


def test_power_iteration_matches_eigh_on_a_convex_model(digits):
    x, y = digits  # softmax regression: the Hessian is positive semi-definite
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((7, 7, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    expected = np.linalg.eigvalsh(exact_hessian(model, x, y))[::-1][:3]
    result = analysis.top_eigenvalues(model, (x, y), k=3, method="power", tol=1e-7, max_iter=3000,
                                         masked=False)  # its zero-initialised bias is not pruned
    assert result.converged
    np.testing.assert_allclose(result.eigenvalues, expected, rtol=1e-3)
    lanczos = analysis.top_eigenvalues(model, (x, y), k=3, method="lanczos", tol=1e-6, masked=False)
    np.testing.assert_allclose(lanczos.eigenvalues, expected, rtol=1e-4)


def test_hutchinson_trace_is_within_its_error_of_the_exact_trace(digits):
    x, y = digits
    model, hessian, op, free = pruned_mlp_hessian(x, y)
    result = analysis.hutchinson_trace(op, tol=0.02, max_iter=400, seed=0)
    assert result["hvps"] >= 10
    assert abs(result["trace"] - np.trace(hessian[np.ix_(free, free)])) < 4 * result["stderr"]


def test_hessian_uses_inference_mode_batch_norm(digits):
    x, y = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((7, 7, 1)), keras.layers.Flatten(), keras.layers.Dense(4),
                              keras.layers.BatchNormalization(), keras.layers.ReLU(), keras.layers.Dense(10)])
    bn = model.layers[2]
    bn.moving_mean.assign(np.full(4, 0.3, np.float32))
    before = [w.numpy() for w in bn.weights]
    op = analysis.Hessian(model, (x, y), masked=False)
    v = np.random.default_rng(0).standard_normal(op.dim)
    with tf.GradientTape() as outer:  # exact Hessian in inference mode, through the same variables
        with tf.GradientTape() as inner:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                y, model(x, training=False), from_logits=True))
        grad = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(loss, op.variables)], 0)
    jac = outer.jacobian(grad, op.variables)
    hessian = np.concatenate([j.numpy().reshape(grad.shape[0], -1) for j in jac], axis=1)
    np.testing.assert_allclose(op.hvp_flat(v), hessian @ v, rtol=1e-4, atol=1e-5)
    for a, b in zip(before, bn.weights):
        np.testing.assert_array_equal(a, b.numpy())  # moving statistics untouched


def test_unknown_solver_is_a_clear_error(digits):
    with pytest.raises(KerasPruneError, match="valid names are: lanczos, power, arpack"):
        analysis.top_eigenvalues(tiny_mlp(), digits, method="arnoldi")


class MatrixOperator:
    """An explicit symmetric matrix behind the flat interface of :class:`analysis.Hessian`."""

    def __init__(self, matrix, mask=None):
        self.matrix = matrix
        self.dim = len(matrix)
        self.mask_flat = np.ones(self.dim) if mask is None else np.asarray(mask, np.float64)
        self.free = int(self.mask_flat.sum())
        self.num_hvps = 0

    def hvp_flat(self, v):
        self.num_hvps += 1
        return self.mask_flat * (self.matrix @ (self.mask_flat * v))

    def random_vector(self, rng, kind="normal"):
        return rng.standard_normal(self.dim) * self.mask_flat


def known_matrix(n=80, seed=0):
    """A symmetric matrix with eigenvalues 5, 4, 3, 2, 1.5, then -8 (largest in magnitude) and
    values in [-1, 1]; and its eigenvectors (columns)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((n, n)))
    values = np.concatenate([[5.0, 4.0, 3.0, 2.0, 1.5, -8.0], np.linspace(-1, 1, n - 6)])
    return (basis * values) @ basis.T, basis


def test_arpack_returns_the_known_top_eigenvalues_of_a_matrix():
    matrix, basis = known_matrix()
    op = MatrixOperator(matrix)
    result = analysis.top_eigenvalues(op, k=5, method="arpack", tol=1e-10, max_iter=1000)
    assert result.method == "arpack" and result.converged and result.hvps == op.num_hvps > 0
    np.testing.assert_allclose(result.eigenvalues, [5.0, 4.0, 3.0, 2.0, 1.5], rtol=1e-9)  # not -8: "LA"
    np.testing.assert_allclose(np.abs(np.sum(result.eigenvectors * basis[:, :5].T, axis=1)), 1.0, rtol=1e-9)
    mask = np.arange(len(matrix)) % 3 != 0  # pruned entries: the spectrum of the free block
    expected = np.linalg.eigvalsh(matrix[np.ix_(mask, mask)])[::-1][:3]
    masked = analysis.arpack(MatrixOperator(matrix, mask), k=3, tol=1e-10, max_iter=1000, seed=1)
    np.testing.assert_allclose(masked.eigenvalues, expected, rtol=1e-9)
    assert np.all(masked.eigenvectors[:, ~mask] == 0)
    small = analysis.arpack(MatrixOperator(matrix[:4, :4]), k=5)  # k >= n: the dense matrix, exactly
    np.testing.assert_allclose(small.eigenvalues, np.linalg.eigvalsh(matrix[:4, :4])[::-1], rtol=1e-12)


@pytest.mark.parametrize("method, max_iter", [("power", 2), ("lanczos", 6), ("arpack", 1)])
def test_a_top_k_that_did_not_converge_says_so_with_a_warning(method, max_iter):
    matrix, _ = known_matrix()
    with pytest.warns(analysis.EigenConvergenceWarning, match=f"{method}: the top-5 .* did not converge"):
        result = analysis.top_eigenvalues(MatrixOperator(matrix), k=5, method=method, tol=1e-12,
                                          max_iter=max_iter)
    assert not result.converged
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a converged solve is silent
        assert analysis.top_eigenvalues(MatrixOperator(matrix), k=5, method=method, tol=1e-6,
                                        max_iter=2000).converged
