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
  restricted to the free entries, as pytorch-hessian-eigenthings' ``lanczos`` mode (its default
  mode is power iteration); same stopping rule, checked only at each restart;
- ``method="power"``: power iteration deflated by the eigenvectors found (as PyHessian), stopping
  when the Rayleigh quotient changes by less than ``tol`` (relative), then refined by one
  Rayleigh-Ritz step on the k vectors (k more HVPs); it finds the eigenvalues of largest
  magnitude, which are the largest ones near a minimum.
All return eigenvalues sorted in descending order. A solve that stops at its HVP cap before
meeting ``tol`` returns ``converged=False`` and warns (:class:`EigenConvergenceWarning`).

Only the HVP is Keras 2 code; the solvers are NumPy in :mod:`kerasprune.pure.eigen` (shared with
the Keras 3 analysis, :mod:`kerasprune.keras3.analysis`) and re-exported here.
"""
import numpy as np

from kerasprune import sparsity
from kerasprune._keras import keras, tf
from kerasprune.errors import KerasPruneError
from kerasprune.pure.eigen import (EigenConvergenceWarning, EigenResult, FlatOperator, _checked,  # noqa: F401
                                   _orthogonalize, arpack, hutchinson, lanczos, power_iteration, solver)


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


class Hessian(FlatOperator):
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
    return solver(method)(op, k=k, tol=tol, max_iter=max_iter, seed=seed)


def hutchinson_trace(model_or_op, data=None, tol=1e-2, min_iter=10, max_iter=200, seed=0, masked=True,
                     batch_size=1000):
    """Hutchinson's estimate of ``trace(P H P)`` with seeded Rademacher vectors: a sharpness figure.

    Stops once the standard error is below ``tol`` times the mean magnitude (after ``min_iter``).
    Returns ``{"trace", "stderr", "hvps", "seconds"}``.
    """
    return hutchinson(_operator(model_or_op, data, masked, batch_size), tol, min_iter, max_iter, seed)


def hvp(model, x, y, vector, masked=True):
    """One HVP of the mean loss of ``model`` on ``(x, y)``: ``P H P v`` (a list like the variables)."""
    op = Hessian(model, (np.asarray(x), np.asarray(y)), masked, batch_size=max(len(x), 1))
    return [t.numpy() for t in op.hvp(vector)]
