"""kerasprune.pure.psp: the capture plan and the ReLU search both Keras versions' PSP captures use."""
import numpy as np
import pytest

from kerasprune.errors import KerasPruneError
from kerasprune.pure import psp


def test_capture_plan_from_the_sub_model_output_shapes():
    plan = psp.capture_plan(["r1", "r2"], [(None, 10), (None, 4, 4, 3), (None, 20)], "dense", second_order=True,
                            max_exact_units=30, pair_samples=5)
    assert plan.shapes == {"r1": (4, 4, 3), "r2": (20,)} and plan.units == {"r1": 48, "r2": 20}
    assert plan.num_classes == 10 and plan.output_name == "dense" and plan.output_shape == (10,)
    assert plan.pairs["r1"].shape == (5, 2) and plan.pairs["r2"] is None  # 48 units > 30: sampled
    # A ReLU producing the output is keyed apart; no second order without the first.
    plan = psp.capture_plan(["r"], [(None, 3), (None, 3)], "r", num_classes=4, first_order=False, second_order=True)
    assert plan.output_name == "r:output" and plan.num_classes == 4 and not plan.second_order and plan.pairs == {}


class Op:
    def __init__(self, name, relu=False, nested=False, activation=None):
        self.name, self.relu, self.nested, self.activation = name, relu, nested, activation


def find(ops, skip_non_relu=False):
    return psp.find_relus("m", ops, lambda op: op.nested, lambda op: op.relu, lambda op: op.activation,
                          skip_non_relu)


def test_find_relus_keeps_graph_order_and_refuses_what_psps_cannot_read():
    r1, r2 = Op("r1", relu=True), Op("r2", relu=True)
    assert find([Op("d"), r1, Op("d2"), r2]) == [r1, r2]
    with pytest.raises(KerasPruneError, match="'t' .* non-ReLU or fused activation 'tanh'"):
        find([r1, Op("t", activation="'tanh'")])
    assert find([r1, Op("t", activation="'tanh'")], skip_non_relu=True) == [r1]
    with pytest.raises(KerasPruneError, match="nested model"):
        find([Op("inner", nested=True)])
    with pytest.raises(KerasPruneError, match="no ReLU layer"):
        find([Op("d")])


def test_numpy_totals_give_the_sum_units_psp_l2_by_hand():
    """The Keras 3 side's NumPy totals: hidden z = [1, -2], [3, 0] (E[z^2] = [5, 2]) and logits
    [1, 0], [3, 0] ([5, 0]) give 7 + 5 = 12 in sum-units, and mean z^2 = 3.5 over the hidden values."""
    plan = psp.capture_plan(["relu"], [(None, 2), (None, 2)], "logits", first_order=False)
    totals = {}
    psp.add_totals(totals, psp.batch_totals(np.array([[1.0, 0.0], [3.0, 0.0]]), [np.array([[1.0, -2.0], [3.0, 0.0]])],
                                            np.array([0, 1]), plan.names, 2, False, False, plan.pairs))
    stats = plan.stats(totals)
    assert psp.psp_l2(stats, "sum-units") == {"per_layer": {"relu": 7.0, "logits": 5.0}, "overall": 12.0}
    assert psp.psp_l2(stats)["overall"] == 3.5
