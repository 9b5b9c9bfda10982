"""What Keras 2's and Keras 3's Lobster optimizers share besides the update (no Keras import).

The update itself (base step, sensitivity term, mask) is written once per Keras version, since it
runs inside each version's compiled step; the hyperparameters borrowed from the base optimizer, the
argument checks and the mask lookup are here.
"""
from kerasprune.pure.sparsity import check_kinds, is_kind_name


def check_lobster_arguments(lmbda, kinds):
    """``kinds`` as a tuple, after one-line errors for a negative ``lmbda`` or an unknown kind."""
    if lmbda < 0:
        raise ValueError(f"lmbda must be >= 0, got {lmbda}")
    return check_kinds(kinds)


class LobsterOptimizerBase:
    """Mixin placed before ``keras.optimizers.Optimizer``. The subclass sets ``base_optimizer``,
    ``_lmbda`` (a variable), ``kinds``, and, when built, ``masks``, ``_mask_index``
    (``_var_key`` -> index in ``masks``) and ``_prunable_vars``, and defines ``_rewind_pairs()``, the
    (model variable, optimizer copy of its best value) pairs, and ``_cut_below(var, mask, threshold)``,
    which returns one variable's new mask and value without its ``|w| < threshold``, and how many
    parameters that newly cuts."""

    @property
    def learning_rate(self):
        """The base optimizer's: schedules and ``ReduceLROnPlateau`` act on the one the step uses."""
        return self.base_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self.base_optimizer.learning_rate = value

    @property
    def lmbda(self):
        return self._lmbda

    @lmbda.setter
    def lmbda(self, value):
        self._lmbda.assign(value)

    def _is_kind(self, name):
        """True if a variable called ``name`` is of a pruned kind (when no model named the variables)."""
        return is_kind_name(name, self.kinds)

    def mask_of(self, variable):
        """The mask variable of a prunable ``variable`` (None if it is not prunable)."""
        index = self._mask_index.get(self._var_key(variable))
        return None if index is None else self.masks[index]

    def prunable_variables(self):
        """The model variables this optimizer regularises and masks (after ``build``)."""
        return list(self._prunable_vars)

    def prune_below(self, threshold):
        """Prunes (for good) every prunable parameter with ``|w| < threshold``; returns how many
        parameters were newly pruned. Call between steps (in cross-replica context, e.g. from a callback)."""
        newly = 0
        for var, mask in zip(self._prunable_vars, self.masks):
            keep, kept_value, cut = self._cut_below(var, mask, threshold)
            newly += cut
            mask.assign(keep)
            var.assign(kept_value)
        return newly

    def remember_best(self):
        """Stores the current weights (and the rewound state, see ``set_rewound_state``) as the ones
        to rewind to (see :meth:`rewind_to_best`)."""
        for var, best in self._rewind_pairs():
            best.assign(var)

    def rewind_to_best(self):
        for var, best in self._rewind_pairs():
            var.assign(best)
