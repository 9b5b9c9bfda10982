"""When LOBSTER prunes and how much: the plateau rule and the threshold search (no TensorFlow).

The code lives in :mod:`kerasprune.pure.schedule`, which imports no Keras, so the Keras 3 callback
(:mod:`kerasprune.keras3`) shares it; this module keeps the Keras 2 import path.
"""
from kerasprune.pure.schedule import (SEARCH_RULES, Plateau, SearchResult, _admissible,  # noqa: F401
                                      _conservative, _reference, search_threshold, start_interval)
