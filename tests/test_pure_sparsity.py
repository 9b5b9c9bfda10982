"""kerasprune.pure.sparsity: the neuron and parameter counts of both Keras versions, on NumPy arrays."""
import numpy as np
import pytest

from kerasprune.pure import sparsity

# a: 3 inputs -> 4 units, b: 4 -> 2, c (logits): 2 -> 3.
A = np.array([[0, 1, 2, 3], [0, 1, 0, 0], [0, 0, 1, 0]], np.float32)  # unit 0: no incoming weight
B = np.array([[1, 0], [0, 0], [0, 5], [2, 0]], np.float32)  # a's unit 1: no outgoing; unit 2 feeds b1 only
C = np.array([[1, 0, 2], [0, 0, 0]], np.float32)  # b1: no outgoing; logit 1: no incoming
A_BIAS = np.array([0, 0.5, 0, 0], np.float32)


class Layer:
    def __init__(self, name, dense=False):
        self.name, self.dense = name, dense


def chain():
    """a -> relu -> b -> relu -> c, as layers and a consumers function."""
    a, relu1, b, relu2, c = Layer("a", True), Layer("relu1"), Layer("b", True), Layer("relu2"), Layer("c", True)
    following = {"a": [relu1], "relu1": [b], "b": [relu2], "relu2": [c], "c": []}
    return [a, b, c], lambda layer: following[layer.name]


def test_hidden_layers_and_successors_of_a_chain_through_relus():
    layers, consumers = chain()
    hidden, successor = sparsity.hidden_dense_conv(layers, consumers, lambda l: l.dense,
                                                   lambda l: l.name.startswith("relu"), key=id)
    assert hidden == ["a", "b"] and successor == {"a": "b", "b": "c"}


def test_a_layer_feeding_two_has_no_successor_but_is_hidden():
    x, y, z = Layer("x", True), Layer("y", True), Layer("z", True)
    following = {"x": [y, z], "y": [], "z": []}
    hidden, successor = sparsity.hidden_dense_conv([x, y, z], lambda l: following[l.name], lambda l: l.dense,
                                                   lambda l: False, key=lambda l: l.name)
    assert hidden == ["x"] and successor == {"x": None}


def test_dead_neurons_by_hand():
    # a0: no incoming weight; a1: no outgoing; a2: feeds only b1, which feeds nothing; a3 feeds b0.
    dead = sparsity.dead_neurons(["a", "b"], {"a": "b", "b": "c"}, {"a": A, "b": B, "c": C})
    assert list(dead) == ["a", "b"]
    np.testing.assert_array_equal(dead["a"], [True, True, True, False])
    np.testing.assert_array_equal(dead["b"], [False, True])


def test_report_by_hand():
    kernels = {"a": A, "b": B, "c": C}
    dead = sparsity.dead_neurons(["a", "b"], {"a": "b", "b": "c"}, kernels)
    rep = sparsity.sparsity_report([("a", A), ("a", A_BIAS), ("b", B), ("c", C)], kernels, dead)
    # Zeros: A 7 of 12, its bias 3 of 4, B 5 of 8, C 4 of 6.
    assert (rep.params, rep.pruned_params) == (30, 19)
    assert rep.per_layer == {"a": 62.5, "b": 62.5, "c": pytest.approx(400 / 6)}
    assert (rep.neurons, rep.pruned_neurons) == (6, 4)
    assert rep.per_layer_neurons == {"a": 75.0, "b": 50.0}
    # The authors' count: every layer's units, logits included, with all incoming weights zero: a0, c1.
    assert (rep.neurons_ref, rep.pruned_neurons_ref) == (9, 2)
    assert rep.as_dict()["pruned_params_pct"] == pytest.approx(100 * 19 / 30)


def test_parameters_of_takes_the_kinds_asked_for_and_refuses_unknown_ones():
    class Dense:
        kernel, bias, use_bias = "k", "b", True

    class Norm:
        gamma, beta = "g", None

    named = [("d", Dense()), ("n", Norm())]
    assert sparsity.parameters_of(named, ("kernel", "norm"), Dense, Norm) == [("d", "k"), ("n", "g")]
    assert sparsity.weights_of([layer for _, layer in named], Dense, Norm) == ["k", "g"]
    with pytest.raises(ValueError, match="unknown parameter kinds"):
        sparsity.parameters_of(named, ("weights",), Dense, Norm)


def test_read_once_reads_each_variable_once():
    reads = []
    read = sparsity.read_once(lambda v: reads.append(v) or np.asarray(v))
    first, second = [1.0], [1.0]
    read(first), read(first), read(second)
    assert reads == [first, second]
