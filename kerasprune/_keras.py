"""The one place kerasprune decides which Keras it uses.

TF-MOT's pruning wrappers only work with Keras 2, which TensorFlow ships as the separate package
``tf_keras``. Setting ``TF_USE_LEGACY_KERAS=1`` before TensorFlow loads makes ``tf.keras`` resolve to
that same package, so layers built by our code, by TF-MOT and by a user's script are one Keras.
Every other module imports ``tf``, ``keras`` (and ``tfmot`` through :func:`tfmot`) from here.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up chatter (oneDNN notices, CPU feature lines) is noise for users of a
# library; respect an explicit setting, silence it otherwise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

tf.get_logger().setLevel("ERROR")

# KERASPRUNE_THREADS=N sizes TensorFlow's thread pools for this process (N intra-op threads, one
# inter-op thread), set here because it must happen before the first op runs. Processes sharing a
# machine (``sweep --jobs``, or long runs side by side) each take their share of the cores this way.
_threads = os.environ.get("KERASPRUNE_THREADS")
if _threads:
    tf.config.threading.set_intra_op_parallelism_threads(int(_threads))
    tf.config.threading.set_inter_op_parallelism_threads(1)

_tfmot = None


def tfmot():
    """Returns ``tensorflow_model_optimization``, imported on first use (it is slow to import)."""
    global _tfmot
    if _tfmot is None:
        import tensorflow_model_optimization as module

        _tfmot = module
    return _tfmot


__all__ = ["tf", "keras", "tfmot"]
