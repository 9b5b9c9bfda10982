"""Builds the tf.distribute strategy that every command runs under, from one flag."""
import json
import os

from kerasprune.errors import KerasPruneError

STRATEGIES = ("default", "one_device", "mirrored", "multiworker", "tpu")


def get_strategy(name="default", devices=None):
    """Returns a ``tf.distribute.Strategy``.

    Args:
      name: ``default`` (TF's default strategy: one device), ``one_device`` (the first GPU, else the
        CPU), ``mirrored`` (all local GPUs, or ``devices``), ``multiworker``
        (MultiWorkerMirroredStrategy configured by ``TF_CONFIG``) or ``tpu``.
      devices: device names for ``mirrored``/``one_device``, e.g. ``["/cpu:0", "/cpu:1"]``.
    """
    from kerasprune._keras import tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        device = (devices or [("/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0")])[0]
        return tf.distribute.OneDeviceStrategy(device)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise KerasPruneError("--strategy multiworker needs TF_CONFIG describing the cluster")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise KerasPruneError(f"unknown strategy {name!r}; valid names are: {', '.join(STRATEGIES)}")


def is_chief():
    """True on the process that writes results: the only one, or the chief / worker 0 of TF_CONFIG."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task") or {}
    cluster = config.get("cluster") or {}
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index", 0) == 0 and "chief" not in cluster
