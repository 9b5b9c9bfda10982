"""The tf.distribute strategy every command runs under, built from one flag.

A strategy is named by a short spec, the value of ``--strategy`` and of ``TrainConfig.strategy``:

  ``default``                     TF's default strategy: one device, no replication.
  ``one_device[:DEVICE]``         ``OneDeviceStrategy`` on DEVICE (default: the first GPU, else the CPU).
  ``mirrored[:DEV,DEV,...]``      ``MirroredStrategy`` on all local GPUs, or on the named devices.
                                  ``/cpu:N`` devices are created as logical CPU devices if needed
                                  (tests and benchmarks on machines without GPUs).
  ``multiworker``                 ``MultiWorkerMirroredStrategy`` over the cluster in ``TF_CONFIG``.
  ``tpu[:ADDRESS]``               ``TPUStrategy`` on the TPU at ADDRESS (default: the local/Cloud TPU).

Batch sizes in kerasprune are *global*: ``batch_size=100`` under 4 replicas means 25 examples per
replica and one weight update per 100 examples, exactly as on one device; :func:`per_replica_batch`
and :func:`global_batch` convert. Only the chief (:func:`is_chief`) writes results, logs and exports.

This module imports TensorFlow only inside functions: the commands and :mod:`kerasprune.config` import it
for ``kerasprune --help`` and to check ``--strategy``, which must stay instant.
"""
import argparse
import contextlib
import json
import os
import re
import shutil
import tempfile
import warnings

from kerasprune.errors import KerasPruneError

STRATEGIES = ("default", "one_device", "mirrored", "multiworker", "tpu")
_TAKES_DEVICES = ("one_device", "mirrored")
_CPU_DEVICE = re.compile(r"^/?(?:job:[^/]+/replica:\d+/task:\d+/)?(?:device:)?cpu:(\d+)$", re.I)


def parse_strategy(spec):
    """``"mirrored:/gpu:0,/gpu:1"`` -> ``("mirrored", ("/gpu:0", "/gpu:1"))``; raises on bad specs."""
    spec = (spec or "default").strip()
    name, _, rest = spec.partition(":")
    if name not in STRATEGIES:
        raise KerasPruneError(f"unknown strategy {name!r}; valid names are: {', '.join(STRATEGIES)} "
                              "(e.g. mirrored, mirrored:/gpu:0,/gpu:1, multiworker)")
    if not rest:
        return name, ()
    if name == "tpu":
        return name, (rest,)
    if name not in _TAKES_DEVICES:
        raise KerasPruneError(f"strategy {name!r} takes no device list (got {spec!r})")
    devices = tuple(d.strip() for d in rest.split(",") if d.strip())
    if not devices:
        raise KerasPruneError(f"strategy spec {spec!r} names no devices")
    if name == "one_device" and len(devices) != 1:
        raise KerasPruneError(f"one_device takes exactly one device, got {len(devices)} in {spec!r}")
    return name, devices


def strategy_flag(text):
    """argparse ``type=`` for ``--strategy``: validates the spec without importing TensorFlow."""
    try:
        parse_strategy(text)
    except KerasPruneError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def declare_strategy(spec):
    """Tells :func:`is_chief` which kind of run this process is, before any strategy exists
    (a command's first writes may come before its first :func:`get_strategy`)."""
    global _MULTIWORKER
    name, _ = parse_strategy(spec)
    if name != "multiworker" and "TF_CONFIG" in os.environ and _MULTIWORKER is not False:
        warnings.warn(f"TF_CONFIG is set but the strategy is {name!r}: this process ignores it and "
                      "writes its results itself", stacklevel=3)
    _MULTIWORKER = name == "multiworker"


def get_strategy(spec="default", devices=None):
    """Returns the ``tf.distribute.Strategy`` that ``spec`` names (see the module docstring).

    Args:
      spec: a strategy spec such as ``mirrored`` or ``mirrored:/cpu:0,/cpu:1``.
      devices: device names that override the ones in ``spec`` (``mirrored``/``one_device``).
    """
    name, spec_devices = parse_strategy(spec)
    devices = list(devices or spec_devices) or None
    declare_strategy(spec)
    if name in _TAKES_DEVICES and devices:
        _ensure_cpu_devices(devices)
        _check_devices_exist(devices)
    from kerasprune._keras import tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        device = (devices or [("/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0")])[0]
        return tf.distribute.OneDeviceStrategy(device)
    if name == "mirrored":
        if devices and all("cpu" in d.lower() for d in devices):
            # Logical CPU replicas: reduce through one device instead of collective ops, whose
            # per-replica ordering TF-MOT's wrapper updates break ("Shape mismatch in the collective").
            return tf.distribute.MirroredStrategy(
                devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise KerasPruneError("--strategy multiworker needs TF_CONFIG describing the cluster "
                                  "(see docs/distributed.md)")
        _check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=devices[0] if devices else None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as exc:
        raise KerasPruneError(f"no TPU found for --strategy {spec}: {str(exc).splitlines()[0]}") from None
    return tf.distribute.TPUStrategy(resolver)


def logical_cpu_devices(n):
    """Splits the CPU into ``n`` logical devices and returns their names (``/device:CPU:0``, ...).

    This is how tf.distribute code is tested without GPUs. It must run before TensorFlow initialises
    its devices (before the first op or device listing of the process); afterwards it only succeeds if
    the process already has ``n`` or more CPU devices.
    """
    from kerasprune._keras import tf

    if n < 1:
        raise KerasPruneError(f"need at least one CPU device, got {n}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    configured = tf.config.get_logical_device_configuration(cpu) or []
    if len(configured) < n:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
        except RuntimeError:
            pass  # already initialised: fine if it has enough devices, checked below
    names = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(names) < n:
        raise KerasPruneError(
            f"{n} CPU devices requested but TensorFlow was initialised with {len(names)}; split the CPU "
            "before any other TensorFlow call (e.g. at the top of the script)")
    return names[:n]


def _ensure_cpu_devices(devices):
    indices = [int(m.group(1)) for m in map(_CPU_DEVICE.match, devices) if m]
    if indices:
        logical_cpu_devices(max(indices) + 1)


def _check_devices_exist(devices):
    """Named devices must exist: TF would silently place a missing GPU's work on the CPU."""
    from kerasprune._keras import tf

    def local(spec):
        spec = tf.DeviceSpec.from_string(spec)
        return (spec.device_type or "").upper(), spec.device_index or 0, spec.job

    available = {local(d.name)[:2]: d.name for d in tf.config.list_logical_devices()}
    missing = [d for d in devices if local(d)[2] in (None, "localhost") and local(d)[:2] not in available]
    if missing:
        raise KerasPruneError(f"device {', '.join(missing)} not found; this machine has: "
                              f"{', '.join(sorted(available.values()))}")


def _check_tf_config():
    try:
        config = json.loads(os.environ["TF_CONFIG"])
        workers = config["cluster"]["worker"] if "worker" in config["cluster"] else []
        task = config["task"]
        task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise KerasPruneError(f"TF_CONFIG is not a valid cluster description ({type(exc).__name__}: "
                              f"{exc}); expected {{\"cluster\": {{\"worker\": [\"host:port\", ...]}}, "
                              "\"task\": {\"type\": \"worker\", \"index\": 0}}") from None
    if not workers and "chief" not in config["cluster"]:
        raise KerasPruneError("TF_CONFIG names no workers")


# Whether this process last made a multiworker strategy (None: no strategy made yet). TF_CONFIG
# only says who writes when the run is multiworker: a stale TF_CONFIG in a shell must not silence
# a single-process run.
_MULTIWORKER = None


def is_chief():
    """True on the process that writes results: the only one, or the chief / worker 0 of TF_CONFIG
    (consulted unless this process made a strategy other than multiworker)."""
    if _MULTIWORKER is False:
        return True
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task") or {}
    cluster = config.get("cluster") or {}
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and "chief" not in cluster


@contextlib.contextmanager
def chief_path(path, keep=True):
    """``with chief_path(p) as where: model.save_weights(where)``: the chief writes ``p``, every
    other worker (and the chief too when not ``keep``) writes a scratch copy deleted on exit.

    In a multi-worker run every worker must take part in a save: Keras reads distributed variables
    (e.g. the optimizer state a ``.weights.h5`` file holds) with collective ops, so a save on the
    chief alone leaves the workers' collectives out of step and training fails or hangs. Call this
    on all workers; only the chief's file survives.
    """
    if keep and is_chief():
        yield path
        return
    scratch = tempfile.mkdtemp(prefix="kerasprune_worker_")
    try:
        yield os.path.join(scratch, os.path.basename(os.path.normpath(path)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def num_replicas(strategy=None):
    """Replicas in sync of ``strategy`` (default: the current one) across all workers."""
    if strategy is None:
        from kerasprune._keras import tf

        strategy = tf.distribute.get_strategy()
    return strategy.num_replicas_in_sync


def per_replica_batch(global_batch_size, strategy=None):
    """The examples each replica gets per step from a global batch (which must split evenly)."""
    replicas = num_replicas(strategy)
    if global_batch_size % replicas:
        raise KerasPruneError(f"global batch {global_batch_size} does not split evenly over {replicas} "
                              f"replicas; use a multiple of {replicas}")
    return global_batch_size // replicas


def global_batch(per_replica_batch_size, strategy=None):
    """The global batch (examples per weight update) of ``per_replica_batch_size`` per replica."""
    return per_replica_batch_size * num_replicas(strategy)


def data_sharded(dataset):
    """``dataset`` with DATA auto-sharding: every worker reads all of it and keeps its share of
    each global batch (the right policy for in-memory pipelines; FILE sharding needs many files)."""
    from kerasprune._keras import tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def distribute_dataset(dataset, strategy=None):
    """A batched ``tf.data`` pipeline split over the replicas (for custom loops; ``model.fit``
    does this itself). Batches of ``dataset`` are global batches."""
    from kerasprune._keras import tf

    strategy = strategy or tf.distribute.get_strategy()
    return strategy.experimental_distribute_dataset(data_sharded(dataset))


def replica_sum(fn, dataset, strategy=None):
    """Sum over all batches of ``dataset`` and over all replicas of ``fn(batch)``.

    ``fn`` runs on each replica with its share of each global batch and returns a tensor or a nest
    of tensors; partial sums are all-reduced with ``ReduceOp.SUM``. This is how statistics over a
    dataset (Hessian-vector products, post-synaptic-potential counts) are computed under any
    strategy: the result equals the single-device sum whatever the number of replicas.
    """
    from kerasprune._keras import tf

    strategy = strategy or tf.distribute.get_strategy()

    @tf.function
    def step(batch):
        per_replica = strategy.run(fn, args=(batch,))
        return tf.nest.map_structure(
            lambda t: strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None), per_replica)

    total = None
    for batch in distribute_dataset(dataset, strategy):
        out = step(batch)
        total = out if total is None else tf.nest.map_structure(tf.add, total, out)
    if total is None:
        raise KerasPruneError("replica_sum got an empty dataset")
    return total


__all__ = ["STRATEGIES", "parse_strategy", "strategy_flag", "get_strategy", "logical_cpu_devices",
           "is_chief", "chief_path", "num_replicas", "per_replica_batch", "global_batch", "data_sharded",
           "distribute_dataset", "replica_sum"]
