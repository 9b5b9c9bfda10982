import dataclasses
import json
import os

import numpy as np
import pytest

from kerasprune import cli, optimizers, runs, training
from kerasprune._keras import keras, tf
from kerasprune.errors import KerasPruneError


def small(**kw):
    base = dict(model="lenet300", dataset="mnist", epochs=2, max_train_examples=2000,
                max_test_examples=500)
    base.update(kw)
    return training.TrainConfig(**base)


def test_one_epoch_of_lenet300_on_real_mnist_reaches_90_percent(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--model", "lenet300", "--dataset", "mnist", "--epochs", "1",
                     "--seed", "0", "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 1
    assert metrics["test_accuracy"] >= 0.90
    assert metrics["test_loss"] < 0.35
    for name in (runs.CONFIG, runs.HISTORY, runs.INITIAL_WEIGHTS, runs.BEST_WEIGHTS):
        assert (out / name).exists(), name
    assert os.listdir(out / runs.TENSORBOARD)
    assert "test_accuracy" in capsys.readouterr().out


def test_saved_model_round_trip_gives_the_same_outputs(tmp_path, mnist_small):
    metrics = training.train(small(epochs=1), str(tmp_path / "run"))
    x, _ = next(iter(mnist_small.test))
    keras_model = keras.models.load_model(metrics["saved_model"])
    raw = tf.saved_model.load(metrics["saved_model"])
    expected = keras_model(x).numpy()
    np.testing.assert_allclose(raw.signatures["serving_default"](image=x)["logits"].numpy(),
                               expected, rtol=1e-5, atol=1e-5)
    # The export is the trained model: its test accuracy is the one in metrics.json.
    keras_model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                        metrics=["accuracy"])
    assert keras_model.evaluate(mnist_test_500(), verbose=0)[1] == pytest.approx(
        metrics["test_accuracy"], abs=1e-6)


def mnist_test_500():
    from kerasprune import data

    return data.load("mnist", max_train_examples=2000, max_test_examples=500).test


class _Crash(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("simulated kill")


def test_interrupted_run_resumes_the_epoch_count(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    original = training.fit_and_record
    monkeypatch.setattr(training, "fit_and_record",
                        lambda *a, **kw: original(*a, callbacks=[_Crash()], **kw))
    with pytest.raises(RuntimeError, match="simulated kill"):
        training.train(small(epochs=4), out)
    monkeypatch.setattr(training, "fit_and_record", original)
    initial = open(os.path.join(out, runs.INITIAL_WEIGHTS), "rb").read()
    metrics = training.train(small(epochs=4), out)
    assert metrics["epochs_completed"] == 4
    epochs = [int(r["epoch"]) for r in training.read_history(out)]
    # Epoch 1 ended but crashed before BackupAndRestore saved it, so it is redone once.
    assert epochs == [0, 1, 2, 3]
    assert open(os.path.join(out, runs.INITIAL_WEIGHTS), "rb").read() == initial
    # Running the finished command again does not train again.
    assert training.train(small(epochs=4), out) == metrics


def test_history_row_is_written_before_the_backup_and_a_repeated_epoch_is_read_once(tmp_path):
    # A kill after the history row but before the backup repeats that epoch: its row comes twice.
    kinds = [type(c).__name__ for c in training.run_callbacks(str(tmp_path))]
    assert kinds.index("CSVLogger") < kinds.index("BackupAndRestore") and kinds[-2:] == ["BackupAndRestore", "ShortConsoleLine"]
    with open(tmp_path / runs.HISTORY, "w") as f:
        f.write("epoch,loss\n0,0.5\n1,0.4\n1,0.38\n2,0.3\n")
    assert training.read_history(str(tmp_path)) == [
        {"epoch": 0.0, "loss": 0.5}, {"epoch": 1.0, "loss": 0.38}, {"epoch": 2.0, "loss": 0.3}]


def test_resuming_with_other_settings_is_refused_before_any_work(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    runs.write_json(str(out / runs.CONFIG), dataclasses.asdict(small(epochs=4)))
    (out / runs.HISTORY).write_text("epoch,loss\n0,1.0\n")  # an epoch was finished (else: restart)
    with pytest.raises(KerasPruneError, match=r"another configuration \(lr: 0.1 -> 0.05\)"):
        training.train(small(epochs=4, lr=0.05), str(out))
    assert sorted(os.listdir(out)) == [".lock", runs.CONFIG, runs.HISTORY]  # nothing else written


def test_same_seed_same_initial_weights_and_first_epoch(tmp_path):
    runs = [training.train(small(epochs=1, seed=s), str(tmp_path / f"r{i}"))
            for i, s in enumerate((7, 7, 8))]
    hist = [training.read_history(str(tmp_path / f"r{i}"))[0] for i in range(3)]
    assert hist[0]["loss"] == hist[1]["loss"] and hist[0]["val_loss"] == hist[1]["val_loss"]
    assert runs[0]["test_loss"] == runs[1]["test_loss"]
    assert hist[0]["loss"] != hist[2]["loss"]


def test_nan_loss_stops_with_a_clear_message_and_the_folder_is_not_silently_reused(tmp_path):
    with pytest.raises(KerasPruneError, match="became NaN/inf at epoch 1"):
        training.train(small(lr=1e30), str(tmp_path / "run"))
    # Keras deleted the backup when training stopped: a rerun would start over on the old files.
    with pytest.raises(KerasPruneError, match="holds a run whose loss became NaN/inf at epoch 1"):
        training.train(small(lr=1e30), str(tmp_path / "run"))


def test_cli_errors_are_one_line(tmp_path, capsys):
    code = cli.main(["train", "--model", "vgg", "--dataset", "mnist", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "unknown model 'vgg'" in err
    code = cli.main(["train", "--model", "lenet300", "--dataset", "mnist", "--optimizer", "nope",
                     "--out", str(tmp_path / "r2")])
    assert code == 2 and "unknown optimizer 'nope'" in capsys.readouterr().err


def test_any_keras_optimizer_is_selectable():
    assert isinstance(training.make_optimizer("adam", 1e-3), keras.optimizers.Adam)
    sgd = training.make_optimizer("sgd", 0.1, momentum=0.9)
    assert sgd.momentum == 0.9 and float(sgd.learning_rate) == pytest.approx(0.1)


def test_help_lists_commands_without_importing_tensorflow():
    import subprocess
    import sys

    code = ("import sys; from kerasprune import cli; cli.build_parser(); "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_write_json_handles_numpy_arrays_and_scalars(tmp_path):
    path = str(tmp_path / "x.json")
    runs.write_json(path, {"a": np.arange(3), "b": np.float32(1.5), "c": np.int64(2)})
    assert runs.read_json(path) == {"a": [0, 1, 2], "b": 1.5, "c": 2}


def test_lr_plateau_counters_survive_a_restart(tmp_path):
    """Patience 3: two flat epochs, a kill, then one more flat epoch must cut the LR (a fresh
    ReduceLROnPlateau would wait three more epochs)."""
    state = str(tmp_path / "lr_plateau_state.json")

    def callback_on_model(lr):
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(lr), loss="mse")
        callback = training.ResumableReduceLROnPlateau(state, monitor="val_loss", factor=0.1, patience=3)
        callback.set_model(model)
        callback.on_train_begin()
        return model, callback

    model, callback = callback_on_model(0.1)
    for epoch, loss in enumerate([1.0, 1.0, 1.0]):
        callback.on_epoch_end(epoch, {"val_loss": loss})
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.1)

    model, callback = callback_on_model(0.1)  # the resumed run (the LR comes from the checkpoint)
    assert (callback.best, callback.wait) == (1.0, 2)
    callback.on_epoch_end(3, {"val_loss": 1.0})
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.01)


# -- weight decay (coupled, PyTorch SGD's weight_decay) ----------------------------------------------
def _tiny_dense():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")])
    model.layers[0].set_weights([np.array([[1.0], [-2.0]], np.float32), np.array([0.5], np.float32)])
    return model


_X, _Y = np.array([[0.3, 0.1]], np.float32), np.array([[0.0]], np.float32)


def _grad(p):
    """Gradient of (x.w + b - y)^2 (mse of one example) at p = [w0, w1, b]."""
    residual = _X[0] @ p[:2] + p[2] - _Y[0, 0]
    return 2 * residual * np.array([_X[0, 0], _X[0, 1], 1.0])


def _weights(model):
    kernel, bias = model.get_weights()
    return np.concatenate([kernel[:, 0], bias])


def _pytorch_sgd(lr, momentum, wd, steps, lmbda=0.0, sensitivity_of_raw_gradient=True):
    """torch.optim.SGD(lr, momentum, weight_decay=wd) by hand (first step: buf = g + wd * w), then,
    if lmbda, LOBSTER's term w -= lmbda * w * relu(1 - |g|) on the result."""
    p, buf = np.array([1.0, -2.0, 0.5]), None
    for step in range(steps):
        raw = _grad(p)
        g = raw + wd * p
        buf = g if step == 0 else momentum * buf + g
        p = p - lr * buf
        if lmbda:
            sens = raw if sensitivity_of_raw_gradient else g
            p = p - lmbda * p * np.maximum(0.0, 1.0 - np.abs(sens))
    return p


@pytest.mark.parametrize("steps", [1, 2])  # 2: the momentum buffer carries the first step's decay
def test_sgd_momentum_weight_decay_is_pytorch_coupled_l2(steps):
    lr, momentum, wd = 0.1, 0.9, 0.05
    model = _tiny_dense()
    model.compile(training.make_optimizer("sgd", lr, momentum, weight_decay=wd), loss="mse")
    for _ in range(steps):
        model.train_on_batch(_X, _Y)
    np.testing.assert_allclose(_weights(model), _pytorch_sgd(lr, momentum, wd, steps), rtol=1e-6)
    # The decay matters at these values (not a test that passes with wd ignored).
    assert not np.allclose(_weights(model), _pytorch_sgd(lr, momentum, 0.0, steps), rtol=1e-4)


@pytest.mark.parametrize("steps", [1, 2])
def test_weight_decay_composes_with_lobster_whose_sensitivity_uses_the_raw_gradient(steps):
    """Lobster(make_optimizer(..., weight_decay)): the base step is PyTorch's SGD with coupled decay;
    LOBSTER's term then uses the raw loss gradient g, not g + wd * w: Lobster.update_step passes its
    gradient to base_optimizer.update_step, which adds the decay to its own copy only."""
    from kerasprune.lobster import Lobster

    lr, momentum, wd, lmbda = 0.1, 0.9, 0.05, 0.1
    model = _tiny_dense()
    model.compile(Lobster(training.make_optimizer("sgd", lr, momentum, weight_decay=wd), lmbda=lmbda),
                  loss="mse")
    for _ in range(steps):
        model.train_on_batch(_X, _Y)
    np.testing.assert_allclose(_weights(model), _pytorch_sgd(lr, momentum, wd, steps, lmbda), rtol=1e-6)
    decayed = _pytorch_sgd(lr, momentum, wd, steps, lmbda, sensitivity_of_raw_gradient=False)
    assert not np.allclose(_weights(model), decayed, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(optimizers.optimizer_classes()))
def test_weight_decay_adds_wd_times_w_to_the_gradient_of_every_optimizer(name):
    """For every optimizer make_optimizer builds: stepping with decay on g equals the plain
    optimizer stepping on g + wd * w (two steps, so slot variables carry the decay)."""
    wd = 0.1
    decayed = training.make_optimizer(name, 0.01, weight_decay=wd)
    plain = training.make_optimizer(name, 0.01)
    assert isinstance(decayed, type(plain))
    init = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
    a, b = tf.Variable(init), tf.Variable(init)
    for g in (np.array([[0.3, -0.1], [0.2, 0.05]], np.float32), np.array([[-0.2, 0.4], [0.1, 0.3]], np.float32)):
        decayed.apply_gradients([(tf.constant(g), a)])
        plain.apply_gradients([(tf.constant(g) + wd * b, b)])
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    assert not np.allclose(a.numpy(), init)


def test_weight_decay_survives_serialisation_inside_lobster():
    from kerasprune.lobster import Lobster

    opt = Lobster(training.make_optimizer("sgd", 0.1, 0.9, weight_decay=1e-4))
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt, use_legacy_format=False),
                                         use_legacy_optimizer=False)
    assert isinstance(clone.base_optimizer, keras.optimizers.SGD)
    assert clone.base_optimizer.coupled_weight_decay == pytest.approx(1e-4)
    assert clone.get_config() == opt.get_config()
    assert type(training.make_optimizer("sgd", 0.1)) is keras.optimizers.SGD  # no decay: plain Keras


def test_negative_weight_decay_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(KerasPruneError, match=r"^weight_decay must be >= 0, got -0.1$"):
        small(weight_decay=-0.1)
    with pytest.raises(KerasPruneError, match=r"^weight_decay must be >= 0, got -1$"):
        training.make_optimizer("sgd", 0.1, weight_decay=-1)
    code = cli.main(["train", "--model", "lenet300", "--dataset", "mnist", "--weight-decay=-1e-4",
                     "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "weight_decay must be >= 0, got -0.0001" in err
    assert not os.path.exists(tmp_path / "r")


def test_a_run_folder_from_before_weight_decay_resumes_as_weight_decay_zero(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    old = dataclasses.asdict(small(epochs=1))
    del old["weight_decay"]  # config.json as kerasprune wrote it before the setting existed
    runs.write_json(str(out / runs.CONFIG), old)
    (out / runs.HISTORY).write_text("epoch,loss\n0,1.0\n")  # an epoch was finished (else: restart)
    with pytest.raises(KerasPruneError, match=r"another configuration \(weight_decay: 0.0 -> 0.0001\)"):
        training.train(small(epochs=1, weight_decay=1e-4), str(out))
    (out / runs.HISTORY).unlink()  # the stand-in row would not match the real history's columns
    assert training.train(small(epochs=1), str(out))["epochs_completed"] == 1
    assert runs.read_json(str(out / runs.CONFIG))["weight_decay"] == 0.0
