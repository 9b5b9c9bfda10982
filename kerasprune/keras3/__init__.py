"""LOBSTER and the minima analysis for Keras 3 models, on any Keras 3 backend.

    import keras
    from kerasprune.keras3 import Lobster, LobsterPruning
    model.compile(optimizer=Lobster(keras.optimizers.SGD(0.1), lmbda=1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x, y, validation_data=(x_val, y_val), epochs=1000,
              callbacks=[LobsterPruning((x_val, y_val), (x_test, y_test), pwe=20, twt=0.05)])

    from kerasprune.keras3 import analysis    # psp_statistics, psp_entropy_first_order, top_eigenvalues...

Importing this package loads Keras 3 (``import keras``) and never :mod:`kerasprune._keras`, so it
does not switch the process to Keras 2: ``import keras`` stays Keras 3 and ``tf.keras`` stays what
the user chose. The backend-free maths is shared with the Keras 2 modules through
:mod:`kerasprune.pure`. See docs/keras3.md (which backends are covered, what stays Keras 2).
"""
import importlib

from kerasprune.keras3.callback import LobsterPruning
from kerasprune.keras3.optimizer import Lobster

__all__ = ["Lobster", "LobsterPruning", "analysis", "sparsity"]


def __getattr__(name):
    if name in ("analysis", "sparsity"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
