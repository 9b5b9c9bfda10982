"""Analysis of the minima pruning reaches (paper Sec. 4-5): Hessian spectrum, PSP norms and
PSP-entropies, and 2D maps of the plane through two solutions. Works on any ReLU Keras model.

See docs/analysis.md for the definitions and the ``kerasprune analyze`` command.
"""
from kerasprune.analysis.callbacks import PSPMonitor
from kerasprune.analysis.hessian import (EigenResult, Hessian, hessian_parameters, hutchinson_trace,
                                         hvp, lanczos, power_iteration, top_eigenvalues)
from kerasprune.analysis.psp import (PSPStats, binary_entropy, neuron_class_entropy, psp_entropy_first_order,
                                     psp_entropy_second_order, psp_l2, psp_layer_names, psp_model,
                                     psp_statistics, relu_layers)

__all__ = [
    "PSPMonitor",
    "EigenResult", "Hessian", "hessian_parameters", "hutchinson_trace", "hvp", "lanczos", "power_iteration",
    "top_eigenvalues", "PSPStats", "binary_entropy", "neuron_class_entropy", "psp_entropy_first_order",
    "psp_entropy_second_order", "psp_l2", "psp_layer_names", "psp_model", "psp_statistics", "relu_layers",
]
