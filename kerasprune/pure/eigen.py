"""Eigen-solvers and a trace estimate on a matrix-free symmetric operator (a Hessian), in NumPy.

An operator is anything with the flat interface of :class:`FlatOperator`: ``hvp_flat`` (float64
vector in, vector out), ``mask_flat`` (1 on free entries), ``dim``, ``free``, ``num_hvps`` and
``random_vector``. The Keras 2 :class:`kerasprune.analysis.hessian.Hessian` and the Keras 3
:class:`kerasprune.keras3.analysis.Hessian` are such operators (only their HVP is backend code), and
so is an explicit matrix in tests. The solvers and their stopping rules are described in
:mod:`kerasprune.analysis.hessian`.
"""
import dataclasses
import time
import warnings
from typing import List, Optional

import numpy as np

from kerasprune.errors import KerasPruneError


class FlatOperator:
    """The flat-vector side of a Hessian operator: subclasses set ``shapes``, ``sizes``, ``dim``,
    ``mask_flat``, ``free`` and ``num_hvps`` and define ``hvp(list of arrays shaped like the
    variables) -> list of tensors``; the solvers then only see flat float64 vectors."""

    def unflatten(self, flat):
        parts = np.split(np.asarray(flat, np.float32), np.cumsum(self.sizes)[:-1])
        return [p.reshape(s) for p, s in zip(parts, self.shapes)]

    def flatten(self, tensors):
        return np.concatenate([np.asarray(t, np.float64).ravel() for t in tensors])

    def hvp_flat(self, flat):
        """HVP on flat float64 vectors (what the eigen-solvers use)."""
        return self.flatten(self.hvp(self.unflatten(flat)))

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

    This is the solver of pytorch-hessian-eigenthings' ``lanczos`` mode (``which="LM"``, ``ncv=2k``,
    ``tol=1e-6``, at most 20 restarts; it builds a uniform start vector but never passes it to
    ``eigsh``, so ARPACK's own start is used). That package's default mode is deflated power
    iteration (:func:`power_iteration`), and the paper does not say which mode it ran. Here the
    operator is the Hessian restricted to the free entries (no null space from pruned weights), the
    start vector is seeded, ``which="LA"`` gives the algebraically largest values
    like the other solvers, and ``ncv`` defaults to scipy's ``max(2k + 1, 20)``. ARPACK's stopping
    rule is the Lanczos one (Ritz estimate ``<= tol |theta|``), checked at each restart only.
    ``max_iter`` caps HVPs: ARPACK uses at most ``ncv + 1 + restarts (ncv - k)`` (measured), so it
    gets as many restarts as fit in ``max_iter``, and at least one.

    Not the default: on LeNet-300 (dense and 90% pruned) it was as accurate as :func:`lanczos` but
    used 21 HVPs where Lanczos used 18 at tol 1e-3, since it checks convergence only after filling
    ``ncv`` vectors (docs/analysis.md). It is kept to reproduce eigenthings' ``lanczos`` mode, as an
    independent check of :func:`lanczos`, and because it keeps ``ncv`` vectors in memory where Lanczos keeps
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


SOLVERS = {"lanczos": lanczos, "power": power_iteration, "arpack": arpack}


def solver(method):
    """The eigen-solver called ``method`` (one-line error listing the valid names otherwise)."""
    if method not in SOLVERS:
        raise KerasPruneError(f"unknown eigen-solver {method!r}; valid names are: {', '.join(SOLVERS)}")
    return SOLVERS[method]


def hutchinson(op, tol=1e-2, min_iter=10, max_iter=200, seed=0):
    """Hutchinson's estimate of ``trace(op)`` with seeded Rademacher vectors (see
    :func:`kerasprune.analysis.hessian.hutchinson_trace`)."""
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
