"""Keras callback that watches the PSPs during training (paper Sec. 5.3, as training goes)."""
from kerasprune._keras import keras, tf
from kerasprune.analysis import psp as psp_lib


class PSPMonitor(keras.callbacks.Callback):
    """Every ``freq`` epochs, measures the PSP L2 norm (mean z^2) and the first-order PSP-entropy
    on ``data`` (batches of ``(x, labels)``; keep it small, it is one extra inference pass).

    The numbers go into the epoch logs as ``psp_l2`` and ``psp_entropy_1`` (so a TensorBoard or
    CSVLogger callback placed *after* this one records them) and, with ``log_dir``, straight into
    TensorBoard scalars under ``psp/`` (written by the chief only). ``convention`` is that of
    :func:`~kerasprune.analysis.psp.psp_entropy_first_order`.
    """

    def __init__(self, data, log_dir=None, freq=1, skip_non_relu=False, convention="kerasprune"):
        super().__init__()
        if freq < 1:
            raise ValueError(f"freq must be >= 1, got {freq}")
        psp_lib._check_convention(convention)
        self.data, self.log_dir, self.freq, self.skip_non_relu = data, log_dir, freq, skip_non_relu
        self.convention = convention
        self._sub, self._writer = None, None

    def set_model(self, model):
        super().set_model(model)
        self._sub = psp_lib.psp_model(model, self.skip_non_relu)  # shares the model's variables

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.freq:
            return
        stats = psp_lib.psp_statistics(self._sub, self.data)
        values = {"psp_l2": psp_lib.psp_l2(stats)["overall"],
                  "psp_entropy_1": psp_lib.psp_entropy_first_order(stats, convention=self.convention)["overall"]}
        if logs is not None:
            logs.update(values)
        from kerasprune.distribute import is_chief

        if self.log_dir and is_chief():
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(self.log_dir)
            with self._writer.as_default():
                for name, value in values.items():
                    tf.summary.scalar(f"psp/{name}", value, step=epoch)
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
