"""One worker of a local multi-worker run (tests/test_multiworker.py starts two of them).

``TF_CONFIG=... python tests/_multiworker_worker.py KIND OUT EPOCHS [CRASH_AT_EPOCH]`` runs a small
run of KIND (``train``: training.train; ``lobster``: a LOBSTER run) of LeNet-300 on 1,000 MNIST
images (``train_bn``: training.train of ResNet-8 on 200 CIFAR-10 images) under
``MultiWorkerMirroredStrategy`` in folder OUT and prints ``RESULT <json>``. With
CRASH_AT_EPOCH, every worker raises at the end of that epoch (0-based), before BackupAndRestore
saves it: a preempted worker group, to be resumed by running the same command again.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kerasprune import models, training  # noqa: E402
from kerasprune._keras import keras  # noqa: E402
from kerasprune.distribute import is_chief  # noqa: E402
from kerasprune.lobster import LobsterConfig, run  # noqa: E402


def preempted_at(last_epoch):
    """A callback that raises at the end of ``last_epoch``, before BackupAndRestore saves it."""
    def end_of_epoch(epoch, logs):
        if epoch == last_epoch:
            raise RuntimeError(f"simulated preemption at the end of epoch {epoch}")

    return keras.callbacks.LambdaCallback(on_epoch_end=end_of_epoch)


def main(kind, out, epochs, crash_at=None):
    if crash_at is not None:
        original = training.fit_and_record
        training.fit_and_record = lambda model, splits, run_dir, n, callbacks=(), verbose="auto": original(
            model, splits, run_dir, n, [preempted_at(int(crash_at))] + list(callbacks), verbose)
    small = dict(model="lenet300", dataset="mnist", epochs=int(epochs), max_train_examples=1000,
                 max_test_examples=200, strategy="multiworker")
    if kind == "train_bn":  # a model with BatchNorm (ResNet-8): its saves run collective ops
        build = models.build
        models.build = lambda name, **kw: build(name, blocks_per_stage=1, **kw)
        small.update(model="resnet32", dataset="cifar10", max_train_examples=200, max_test_examples=100)
        kind = "train"
    if kind == "train":
        metrics = training.train(training.TrainConfig(**small), out, verbose=2)
        result = {k: metrics[k] for k in ("test_loss", "test_accuracy")}
    else:
        # lr 0.5 makes the validation loss rise at epoch 2, so LOBSTER prunes (threshold search).
        rows = run(LobsterConfig(**small, pwe=1, lmbda=1e-3, lr=0.5), out, verbose=2)
        keep = ("point", "pruned_params_pct", "epoch", "val_loss", "threshold")
        result = {"rows": [{k: r[k] for k in keep} for r in rows]}
    print("RESULT " + json.dumps(dict(result, chief=is_chief())))


if __name__ == "__main__":
    main(*sys.argv[1:])
