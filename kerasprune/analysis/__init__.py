"""Analysis of the minima pruning reaches (paper Sec. 4-5): Hessian spectrum, PSP norms and
PSP-entropies, and 2D maps of the plane through two solutions. Works on any ReLU Keras model.

``compare(AnalysisConfig(...), g, oneshot, out)`` runs the whole comparison of two solutions, as
``kerasprune analyze`` does. See docs/analysis.md for the definitions, the command and the Python use.

The names below and the submodules load on first use, so importing this package (e.g. for ``AnalysisConfig``'s
presets in ``kerasprune analyze --help``) imports no TensorFlow. ``kerasprune.analysis.compare`` is
the function; its module is ``importlib.import_module("kerasprune.analysis.compare")``.
"""
import importlib

from kerasprune.analysis.compare import AnalysisConfig, compare  # no TensorFlow at import

# Exported name -> the submodule defining it (imported on first use).
_LAZY = {
    "PSPMonitor": "callbacks",
    **dict.fromkeys(("EigenConvergenceWarning", "EigenResult", "Hessian", "arpack", "hessian_parameters",
                     "hutchinson_trace", "hvp", "lanczos", "power_iteration", "top_eigenvalues"), "hessian"),
    **dict.fromkeys(("PSP_CONVENTIONS", "REFERENCE_CLAMP", "PSPStats", "binary_entropy", "neuron_class_entropy",
                     "psp_entropy_first_order", "psp_entropy_second_order", "psp_l2", "psp_layer_names",
                     "psp_model", "psp_statistics", "relu_layers", "ENTROPY_AGGREGATES", "PSP_L2_CONVENTIONS",
                     "TRAIN_LOSS_CONVENTIONS", "per_batch_loss", "training_loss"), "psp"),
}

__all__ = ["AnalysisConfig", "compare", *_LAZY]


def __getattr__(name):
    if name not in _LAZY:  # a submodule, e.g. ``analysis.landscape``
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
