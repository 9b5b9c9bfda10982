"""Hessian of the training loss: Hessian-vector products, top eigenvalues, trace (paper Sec. 5.2).

The loss is the mean sparse categorical cross-entropy of the model's logits over a fixed set of
examples (the commands use a seeded sample of the training set), with batch norm in inference mode.
HVPs use nested ``tf.GradientTape``s (reverse over reverse) in a ``tf.function``; the data are
streamed in batches and each batch's HVP is weighted by its share of the examples, so the result is
the HVP of the loss averaged over all of them, at any batch size.

Masked by default: a pruned weight (an entry equal to 0 of
:func:`kerasprune.sparsity.prunable_variables`) is not a free parameter, so the operator is
``P H P`` with ``P`` the projection on the unpruned entries; its nonzero spectrum is the spectrum of
the Hessian restricted to the unpruned parameters. Other trainable variables are free parameters.

Eigen-solvers work on flat float64 numpy vectors and count every HVP they use:
- :func:`top_eigenvalues` ``method="lanczos"`` (the default): Lanczos with full
  reorthogonalisation; stops when every wanted Ritz pair has residual ``|beta_m s_m| <= tol |theta|``
  (a bound on its error);
- ``method="arpack"``: scipy's ``eigsh`` (ARPACK's implicitly restarted Lanczos) on the Hessian
  restricted to the free entries, the solver behind the paper's eigenvalues
  (pytorch-hessian-eigenthings); same stopping rule, checked only at each restart;
- ``method="power"``: power iteration deflated by the eigenvectors found (as PyHessian), stopping
  when the Rayleigh quotient changes by less than ``tol`` (relative), then refined by one
  Rayleigh-Ritz step on the k vectors (k more HVPs); it finds the eigenvalues of largest
  magnitude, which are the largest ones near a minimum.
All return eigenvalues sorted in descending order. A solve that stops at its HVP cap before
meeting ``tol`` returns ``converged=False`` and warns (:class:`EigenConvergenceWarning`).
"""
import dataclasses
import time
import warnings
from typing import List, Optional

import numpy as np

from kerasprune import sparsity
from kerasprune._keras import keras, tf
from kerasprune.errors import KerasPruneError


def hessian_parameters(model, masked=True):
    """``(variables, masks)``: the trainable variables and, per variable, a 0/1 mask of its free
    entries (``None`` when all entries are free). With ``masked``, zeros of the prunable variables
    (Dense/Conv kernels and biases, BN gamma/beta) are pruned, hence not free."""
    prunable = {v.ref() for _, v in sparsity.prunable_variables(model)} if masked else set()
    variables = list(model.trainable_variables)
    masks = [tf.cast(tf.not_equal(v, 0), v.dtype) if v.ref() in prunable else None for v in variables]
    return variables, masks


def _as_batches(data, batch_size):
    """``(x, y)`` arrays -> a list of tensor batches; a ``tf.data.Dataset`` is kept as is."""
    if isinstance(data, tf.data.Dataset):
        return data
    x, y = data
    n = len(x)
    return [(tf.constant(x[i:i + batch_size]), tf.constant(y[i:i + batch_size]))
            for i in range(0, n, batch_size)]


class Hessian:
    """The (masked) Hessian of the mean training loss of ``model`` over ``data``, as an operator.

    Args:
      model: a Keras model that outputs logits.
      data: ``(x, y)`` arrays (split into ``batch_size`` batches) or a ``tf.data.Dataset`` of
        ``(x, y)`` batches; every HVP passes over all of it.
      masked: restrict to unpruned parameters (default; see the module docstring).
      jit_compile: compile the HVP with XLA.
    """

    def __init__(self, model, data, masked=True, batch_size=1000, jit_compile=False):
        self.model = model
        self.variables, masks = hessian_parameters(model, masked)
        self.shapes = [tuple(v.shape) for v in self.variables]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.masks = [m if m is not None else tf.ones_like(v) for m, v in zip(masks, self.variables)]
        self.mask_flat = np.concatenate([m.numpy().ravel() for m in self.masks]).astype(np.float64)
        self.dim = int(self.mask_flat.size)
        self.free = int(self.mask_flat.sum())
        self.batches = _as_batches(data, batch_size)
        self.num_examples = sum(int(tf.shape(y)[0]) for _, y in self.batches)
        if self.num_examples == 0:
            raise KerasPruneError("no examples to compute the Hessian on")
        self.num_hvps = 0
        self.strategy = model.distribute_strategy
        if self.strategy is not tf.distribute.get_strategy() and not isinstance(self.batches, tf.data.Dataset):
            # Under a real strategy the examples must be split over replicas, not copied to each.
            x = tf.concat([b[0] for b in self.batches], 0)
            y = tf.concat([b[1] for b in self.batches], 0)
            self.batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
        scale = 1.0 / self.num_examples

        def replica_hvp(x, y, vector):
            vector = [v * m for v, m in zip(vector, self.masks)]
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    loss = tf.reduce_sum(loss_fn(y, self.model(x, training=False))) * scale
                grads = inner.gradient(loss, self.variables)
                dot = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vector)])
            hv = outer.gradient(dot, self.variables)
            return [h * m for h, m in zip(hv, self.masks)]

        def replica_grad(x, y):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(loss_fn(y, self.model(x, training=False))) * scale
            return [g * m for g, m in zip(tape.gradient(loss, self.variables), self.masks)], loss

        strategy = self.strategy
        self._hvp_step = tf.function(lambda x, y, v: strategy.run(replica_hvp, args=(x, y, v)),
                                     jit_compile=jit_compile, reduce_retracing=True)
        self._grad_step = tf.function(lambda x, y: strategy.run(replica_grad, args=(x, y)),
                                      jit_compile=jit_compile, reduce_retracing=True)

    def _sum_over_data(self, step, *args):
        total = None
        batches = self.batches
        if self.strategy is not tf.distribute.get_strategy() and isinstance(batches, tf.data.Dataset):
            batches = self.strategy.experimental_distribute_dataset(batches)
        for x, y in batches:
            out = step(x, y, *args)
            out = tf.nest.map_structure(
                lambda t: self.strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None), out)
            total = out if total is None else tf.nest.map_structure(tf.add, total, out)
        return total

    def hvp(self, vector):
        """``P H P v`` for ``vector`` a list of tensors shaped like the variables."""
        self.num_hvps += 1
        return self._sum_over_data(self._hvp_step, [tf.convert_to_tensor(v, tf.float32) for v in vector])

    def gradient(self):
        """``(masked gradient list, loss)`` of the mean loss (the cost unit of the benchmarks)."""
        return self._sum_over_data(self._grad_step)

    def unflatten(self, flat):
        parts = np.split(np.asarray(flat, np.float32), np.cumsum(self.sizes)[:-1])
        return [p.reshape(s) for p, s in zip(parts, self.shapes)]

    def flatten(self, tensors):
        return np.concatenate([np.asarray(t, np.float64).ravel() for t in tensors])

    def hvp_flat(self, flat):
        """HVP on flat float64 vectors (what the eigen-solvers use)."""
        return self.flatten([t.numpy() for t in self.hvp(self.unflatten(flat))])

    def random_vector(self, rng, kind="normal"):
        """A random flat vector on the free entries (normal, or Rademacher for Hutchinson)."""
        if kind == "rademacher":
            v = rng.choice([-1.0, 1.0], size=self.dim)
        else:
            v = rng.standard_normal(self.dim)
        return v * self.mask_flat


class EigenConvergenceWarning(UserWarning):
    """A top-k eigen-solve stopped at its HVP cap before meeting its tolerance: its values may be
    wrong (power iteration can then even return negative ones), so it must not pass silently."""


@dataclasses.dataclass
class EigenResult:
    """Top eigenvalues (descending), their eigenvectors (flat, ``[k, dim]``) and the cost."""

    eigenvalues: List[float]
    eigenvectors: Optional[np.ndarray]
    hvps: int
    seconds: float
    converged: bool
    method: str

    def as_dict(self):
        return {"eigenvalues": list(map(float, self.eigenvalues)), "hvps": self.hvps,
                "seconds": self.seconds, "converged": self.converged, "method": self.method}


def _checked(result, k, tol, max_iter):
    """``result``, after warning if it did not converge (the flag alone is too easy to miss)."""
    if not result.converged:
        negative = sum(v < 0 for v in result.eigenvalues)
        found = "" if len(result.eigenvalues) >= k else f"; only {len(result.eigenvalues)} of {k} values found"
        sign = f"; {negative} of them negative" if negative else ""
        warnings.warn(f"{result.method}: the top-{k} Hessian eigenvalues did not converge to tol {tol} "
                      f"within max_iter={max_iter} ({result.hvps} HVPs){found}{sign}; they may be wrong: "
                      "raise max_iter (or tol)", EigenConvergenceWarning, stacklevel=3)
    return result


def _orthogonalize(v, basis):
    for b in basis:
        v = v - np.dot(b, v) * b
    return v


def power_iteration(op, k=5, tol=1e-3, max_iter=100, seed=0, refine=True):
    """Top-``k`` eigenpairs by deflated power iteration (see module docstring), then (``refine``)
    a Rayleigh-Ritz step on the vectors found."""
    rng = np.random.default_rng(seed)
    start, hvps0 = time.time(), op.num_hvps
    values, vectors, converged = [], [], True
    for _ in range(min(k, op.free)):
        v = _orthogonalize(op.random_vector(rng), vectors)
        v /= np.linalg.norm(v)
        value, done = None, False
        for _ in range(max_iter):
            hv = op.hvp_flat(v)
            new = float(np.dot(v, hv))
            hv = _orthogonalize(hv, vectors)
            norm = np.linalg.norm(hv)
            if norm == 0:
                value, done = new, True
                break
            v = hv / norm
            if value is not None and abs(new - value) <= tol * (abs(value) + 1e-12):
                value, done = new, True
                break
            value = new
        converged &= done
        values.append(value)
        vectors.append(v)
    if refine and vectors:
        # Rayleigh-Ritz on the span of the k vectors (k more HVPs): eigenvalue errors become
        # quadratic in the eigenvector errors, and the order is that of the projected operator.
        basis = np.array(vectors)
        projected = basis @ np.array([op.hvp_flat(b) for b in basis]).T
        values, rotation = np.linalg.eigh((projected + projected.T) / 2)
        vectors = list(rotation.T @ basis)
        values = list(values)
    order = np.argsort(values)[::-1]
    result = EigenResult([float(values[i]) for i in order], np.array([vectors[i] for i in order]),
                         op.num_hvps - hvps0, time.time() - start, bool(converged), "power")
    return _checked(result, k, tol, max_iter)


def lanczos(op, k=5, tol=1e-3, max_iter=100, seed=0):
    """Top-``k`` (algebraically largest) eigenpairs by Lanczos with full reorthogonalisation.

    The default solver: checking the Ritz residuals after every HVP lets it stop as soon as the
    top k have converged, which took fewer HVPs than ARPACK (:func:`arpack`) at the same accuracy.
    It keeps every Lanczos vector (``max_iter`` x parameters in float64 at most)."""
    rng = np.random.default_rng(seed)
    start, hvps0 = time.time(), op.num_hvps
    k = min(k, op.free)
    max_iter = max(min(max_iter, op.free), k)
    v = op.random_vector(rng)
    v /= np.linalg.norm(v)
    basis, alphas, betas = [v], [], []
    converged = False
    theta, s = None, None
    for j in range(max_iter):
        w = op.hvp_flat(basis[j])
        alpha = float(np.dot(basis[j], w))
        alphas.append(alpha)
        # Full reorthogonalisation twice ("twice is enough"): keeps the basis orthonormal in float.
        for _ in range(2):
            w = w - np.stack(basis).T @ (np.stack(basis) @ w)
        beta = float(np.linalg.norm(w))
        tri = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, s = np.linalg.eigh(tri)
        if j + 1 >= k:
            top = np.arange(len(theta))[::-1][:k]
            residual = np.abs(beta * s[-1, top])
            if np.all(residual <= tol * np.maximum(np.abs(theta[top]), 1e-12)):
                converged = True
                break
        if beta <= 1e-10 * max(abs(alpha), 1.0):  # invariant subspace: the Ritz values are exact
            converged = True
            break
        betas.append(beta)
        basis.append(w / beta)
    top = np.arange(len(theta))[::-1][:k]
    vectors = (s[:, top].T @ np.stack(basis[:len(theta)]))
    result = EigenResult([float(t) for t in theta[top]], vectors, op.num_hvps - hvps0,
                         time.time() - start, converged, "lanczos")
    return _checked(result, k, tol, max_iter)


def arpack(op, k=5, tol=1e-3, max_iter=100, seed=0, ncv=None, which="LA"):
    """Top-``k`` eigenpairs by scipy's ``eigsh`` (ARPACK, implicitly restarted Lanczos).

    This is the solver of pytorch-hessian-eigenthings, so of the paper's eigenvalues (which used
    ``which="LM"``, ``ncv=2k``, ``tol=1e-6``, at most 20 restarts and an unseeded uniform start).
    Here the operator is the Hessian restricted to the free entries (no null space from pruned
    weights), the start vector is seeded, ``which="LA"`` gives the algebraically largest values
    like the other solvers, and ``ncv`` defaults to scipy's ``max(2k + 1, 20)``. ARPACK's stopping
    rule is the Lanczos one (Ritz estimate ``<= tol |theta|``), checked at each restart only.
    ``max_iter`` caps HVPs: ARPACK uses at most ``ncv + 1 + restarts (ncv - k)`` (measured), so it
    gets as many restarts as fit in ``max_iter``, and at least one.

    Not the default: on LeNet-300 (dense and 90% pruned) it was as accurate as :func:`lanczos` but
    used 21 HVPs where Lanczos used 18 at tol 1e-3, since it checks convergence only after filling
    ``ncv`` vectors (docs/analysis.md). It is kept to reproduce the paper's solver, as an independent
    check of :func:`lanczos`, and because it keeps ``ncv`` vectors in memory where Lanczos keeps
    one per HVP.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    start, hvps0 = time.time(), op.num_hvps
    free = np.flatnonzero(op.mask_flat)
    if free.size == 0:
        raise KerasPruneError("the Hessian has no free parameter: every prunable weight is 0")
    k = min(k, free.size)

    def restricted(x):
        full = np.zeros(op.dim)
        full[free] = np.ravel(x)
        return op.hvp_flat(full)[free]

    if k >= free.size - 1:  # ARPACK needs k < n - 1 (and room for ncv): the dense matrix is cheap
        dense = np.stack([restricted(e) for e in np.eye(free.size)])
        values, vectors = np.linalg.eigh((dense + dense.T) / 2)
        values, vectors, converged = values[::-1][:k], vectors[:, ::-1][:, :k], True
    else:
        ncv = min(max(ncv or max(2 * k + 1, 20), k + 2), free.size)
        restarts = max(1, (max_iter - ncv - 1) // (ncv - k))
        v0 = np.random.default_rng(seed).standard_normal(free.size)
        operator = LinearOperator((free.size, free.size), matvec=restricted, dtype=np.float64)
        try:
            values, vectors = eigsh(operator, k=k, which=which, v0=v0, ncv=ncv, maxiter=restarts, tol=tol)
            converged = True
        except ArpackNoConvergence as e:  # keeps the pairs that did converge
            values, vectors, converged = e.eigenvalues, e.eigenvectors, False
    order = np.argsort(values)[::-1]
    embedded = np.zeros((len(order), op.dim))
    embedded[:, free] = np.asarray(vectors)[:, order].T
    result = EigenResult([float(values[i]) for i in order], embedded, op.num_hvps - hvps0,
                         time.time() - start, converged, "arpack")
    return _checked(result, k, tol, max_iter)


def _operator(model_or_op, data, masked, batch_size):
    """A :class:`Hessian`, or anything with its flat interface (``hvp_flat``, ``mask_flat``, ``dim``,
    ``free``, ``num_hvps``, ``random_vector``), such as an explicit matrix in tests."""
    if hasattr(model_or_op, "hvp_flat"):
        return model_or_op
    return Hessian(model_or_op, data, masked, batch_size)


def top_eigenvalues(model_or_op, data=None, k=5, method="lanczos", tol=1e-3, max_iter=100, seed=0,
                    masked=True, batch_size=1000):
    """Top-``k`` Hessian eigenvalues (descending) of ``model``'s mean loss on ``data``.

    Args:
      model_or_op: a Keras model (then ``data`` is required) or a :class:`Hessian` (or an operator
        with its flat interface).
      method: ``"lanczos"``, ``"arpack"`` or ``"power"``.
      tol: convergence tolerance (see the module docstring); max_iter: cap on HVPs (Lanczos,
        ARPACK) or on HVPs per eigenvalue (power).
    Returns:
      :class:`EigenResult` with the number of HVPs used and the wall time. If it did not converge
      (``converged=False``), an :class:`EigenConvergenceWarning` is issued too.
    """
    op = _operator(model_or_op, data, masked, batch_size)
    solvers = {"lanczos": lanczos, "power": power_iteration, "arpack": arpack}
    if method not in solvers:
        raise KerasPruneError(f"unknown eigen-solver {method!r}; valid names are: {', '.join(solvers)}")
    return solvers[method](op, k=k, tol=tol, max_iter=max_iter, seed=seed)


def hutchinson_trace(model_or_op, data=None, tol=1e-2, min_iter=10, max_iter=200, seed=0, masked=True,
                     batch_size=1000):
    """Hutchinson's estimate of ``trace(P H P)`` with seeded Rademacher vectors: a sharpness figure.

    Stops once the standard error is below ``tol`` times the mean magnitude (after ``min_iter``).
    Returns ``{"trace", "stderr", "hvps", "seconds"}``.
    """
    op = _operator(model_or_op, data, masked, batch_size)
    rng = np.random.default_rng(seed)
    start, samples = time.time(), []
    for i in range(max_iter):
        v = op.random_vector(rng, "rademacher")
        samples.append(float(np.dot(v, op.hvp_flat(v))))
        if i + 1 >= min_iter:
            err = np.std(samples, ddof=1) / np.sqrt(len(samples))
            if err <= tol * abs(np.mean(samples)):
                break
    err = float(np.std(samples, ddof=1) / np.sqrt(len(samples))) if len(samples) > 1 else float("nan")
    return {"trace": float(np.mean(samples)), "stderr": err, "hvps": len(samples),
            "seconds": time.time() - start}


def hvp(model, x, y, vector, masked=True):
    """One HVP of the mean loss of ``model`` on ``(x, y)``: ``P H P v`` (a list like the variables)."""
    op = Hessian(model, (np.asarray(x), np.asarray(y)), masked, batch_size=max(len(x), 1))
    return [t.numpy() for t in op.hvp(vector)]
