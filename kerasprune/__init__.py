"""kerasprune: pruning Keras networks (LOBSTER, one-shot baselines) and analysing their minima.

Submodules (``kerasprune.data``, ``.models``, ``.training``, ``.sparsity``, ``.lobster``, ...) load on
first use, so ``import kerasprune`` and ``kerasprune --help`` stay fast and quiet; TensorFlow is
imported, through ``kerasprune._keras``, by the modules that need it.
"""
import importlib

__version__ = "0.1.0"


def __getattr__(name):
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module 'kerasprune' has no attribute {name!r}") from None
