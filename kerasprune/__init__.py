"""kerasprune: pruning Keras networks (LOBSTER, one-shot baselines) and analysing their minima.

Submodules (``kerasprune.data``, ``.models``, ``.training``, ``.sparsity``, ``.lobster``, ...) load on
first use, so ``import kerasprune`` and ``kerasprune --help`` stay fast and quiet; TensorFlow is
imported, through ``kerasprune._keras``, by the modules that need it.
"""
import importlib
import importlib.util

__version__ = "0.1.0"


def __getattr__(name):
    """``kerasprune.<submodule>`` without importing it first (an unknown name stays an AttributeError)."""
    if importlib.util.find_spec(f"{__name__}.{name}") is None:
        raise AttributeError(f"module 'kerasprune' has no attribute {name!r}")
    return importlib.import_module(f"{__name__}.{name}")
