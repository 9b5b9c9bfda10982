"""LOBSTER gradual pruning for Keras 2: a wrapper optimizer and a callback.

Use it from any ``model.fit``::

    from kerasprune.lobster import Lobster, LobsterPruning
    model.compile(optimizer=Lobster(keras.optimizers.SGD(0.1), lmbda=1e-4), loss=..., metrics=["accuracy"])
    pruning = LobsterPruning(val_ds, test_ds, pwe=20, twt=0.05)
    model.fit(train_ds, validation_data=val_ds, epochs=1000, callbacks=[pruning])
    pruning.operating_points  # one row per sparsity level reached

or whole runs in a folder: ``run(LobsterConfig(model="lenet300", dataset="mnist"), "runs/x")``
(``kerasprune lobster`` on the command line). See docs/lobster.md.

Modules: ``optimizer`` (update rule + masks), ``schedule`` (plateau rule + threshold search, pure),
``callback`` (LobsterPruning), ``points`` (operating-point files), ``runner`` (run folders).
"""
from kerasprune.lobster.callback import LobsterPruning
from kerasprune.lobster.optimizer import Lobster
from kerasprune.lobster.points import load_operating_point, read_operating_points
from kerasprune.lobster.runner import LobsterConfig, run
from kerasprune.lobster.schedule import Plateau, SearchResult, search_threshold

__all__ = ["Lobster", "LobsterPruning", "LobsterConfig", "run", "read_operating_points",
           "load_operating_point", "search_threshold", "Plateau", "SearchResult"]
