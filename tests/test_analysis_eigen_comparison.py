"""Hand-written Lanczos vs ARPACK (scipy ``eigsh``, the paper's solver) on a real LeNet-300 Hessian.

Slow (about a minute of CPU): not in the default suite. The numbers in docs/analysis.md come from

    KERASPRUNE_DATA_DIR=../shared/datasets python -m pytest -q -s -m slow tests/test_analysis_eigen_comparison.py
"""
import inspect

import numpy as np
import pytest

from kerasprune import analysis, data, models, training
from kerasprune._keras import tf

SEEDS = (0, 1, 2)
TOLS = (1e-3, 1e-4, 1e-6)
SOLVERS = {"lanczos": analysis.lanczos, "arpack": analysis.arpack,
           "arpack ncv=2k": lambda op, **kw: analysis.arpack(op, ncv=10, **kw)}  # pytorch-hessian-eigenthings' ncv


def lenet300_solutions():
    """LeNet-300 trained on 2,000 real MNIST images; dense, then 90% magnitude-pruned and
    fine-tuned with its mask. Returns ``{name: (model, masked)}`` and 500 training examples."""
    splits = data.load("mnist", max_train_examples=2000, batch_size=50)
    model = models.build("lenet300", seed=0)
    training.compile_model(model, training.make_optimizer("sgd", 0.1))
    model.fit(splits.train, epochs=3, verbose=0)
    dense = models.build("lenet300", seed=0)
    dense.set_weights(model.get_weights())
    kernels = [v for v in model.trainable_variables if len(v.shape) > 1]
    masks = [tf.constant(np.abs(k.numpy()) > np.quantile(np.abs(k.numpy()), 0.9), tf.float32) for k in kernels]
    for k, m in zip(kernels, masks):
        k.assign(k * m)
    training.compile_model(model, training.make_optimizer("sgd", 0.05))
    for x, y in splits.train.repeat(1):  # one epoch with the mask fixed
        model.train_on_batch(x, y)
        for k, m in zip(kernels, masks):
            k.assign(k * m)
    batches = [(x.numpy(), y.numpy()) for x, y in splits.train.take(10)]
    xy = tuple(np.concatenate(parts) for parts in zip(*batches))
    return {"dense": (dense, False), "pruned 90%": (model, True)}, xy


@pytest.mark.slow
def test_lanczos_and_arpack_hvp_count_and_accuracy_against_a_tight_reference():
    solutions, xy = lenet300_solutions()
    rows, summary = [], {}
    for name, (model, masked) in solutions.items():
        op = analysis.Hessian(model, xy, masked=masked, batch_size=500)
        tight = analysis.top_eigenvalues(op, k=5, method="arpack", tol=1e-10, max_iter=3000)
        check = analysis.top_eigenvalues(op, k=5, method="lanczos", tol=1e-10, max_iter=400)
        assert tight.converged and check.converged
        reference = np.array(tight.eigenvalues)
        np.testing.assert_allclose(check.eigenvalues, reference, rtol=1e-6)
        rows.append(f"| {name} ({op.free} free) | reference | 1e-10 | {tight.hvps} (ARPACK), {check.hvps} "
                    f"(Lanczos) | {np.array2string(reference, precision=5)} |")
        for tol in TOLS:
            for label, solver in SOLVERS.items():
                results = [solver(op, k=5, tol=tol, max_iter=300, seed=s) for s in SEEDS]
                hvps = [r.hvps for r in results]
                error = max(np.max(np.abs(np.array(r.eigenvalues) - reference) / reference) for r in results)
                assert all(r.converged for r in results)
                summary[name, tol, label] = (np.mean(hvps), error)
                rows.append(f"| {name} | {label} | {tol:g} | {np.mean(hvps):.1f} ({min(hvps)}-{max(hvps)}) "
                            f"| max rel. error {error:.1e} |")
    print("\n| model | solver | tol | HVPs: mean (min-max) over seeds 0-2 | top-5 |\n|---|---|---|---|---|")
    print("\n".join(rows))
    default = inspect.signature(analysis.top_eigenvalues).parameters["method"].default
    other = "arpack" if default == "lanczos" else "lanczos"
    for name in solutions:  # the default is the cheaper one at the default tolerance, and as accurate
        hvps, error = summary[name, 1e-3, default]
        assert hvps < summary[name, 1e-3, other][0]
        assert error <= max(summary[name, 1e-3, other][1], 1e-3)
