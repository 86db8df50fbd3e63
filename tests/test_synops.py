"""Synaptic-operation fan-out against a brute-force count (padding, stride, zero weights)."""
import itertools

import numpy as np
import pytest

from bsnn_lava.ir import Conv2d, Dense


def _brute_force(op: Conv2d, shape):
    c_in, h, w = shape
    _, out_h, out_w = op.output_shape(shape)
    counts = np.zeros(shape, dtype=np.int64)
    kh, kw = op.weight.shape[2:]
    for o, oy, ox, c, ky, kx in itertools.product(range(op.weight.shape[0]), range(out_h), range(out_w), range(c_in),
                                                  range(kh), range(kw)):
        y = oy * op.stride[0] + ky - op.padding[0]
        x = ox * op.stride[1] + kx - op.padding[1]
        if 0 <= y < h and 0 <= x < w and op.weight[o, c, ky, kx] != 0:
            counts[c, y, x] += 1
    return counts


@pytest.mark.parametrize("kernel, stride, padding, shape", [
    ((3, 3), (1, 1), (1, 1), (2, 5, 5)), ((3, 3), (2, 2), (1, 1), (2, 7, 6)), ((1, 1), (2, 2), (0, 0), (3, 5, 5)),
    ((5, 3), (2, 1), (2, 0), (1, 9, 4)), ((6, 6), (2, 2), (2, 2), (2, 8, 8)), ((2, 2), (3, 3), (0, 0), (1, 7, 7))])
def test_conv_fan_out_matches_brute_force(kernel, stride, padding, shape):
    rng = np.random.default_rng(sum(kernel) + sum(shape))
    weight = rng.normal(size=(3, shape[0], *kernel)) * (rng.random((3, shape[0], *kernel)) > 0.3)
    op = Conv2d(weight, stride, padding)
    np.testing.assert_array_equal(op.fan_out(shape), _brute_force(op, shape))


def test_dense_fan_out_counts_nonzero_weights():
    weight = np.array([[1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 3.0, 1.0]])
    np.testing.assert_array_equal(Dense(weight).fan_out((1, 2, 2)), [[[1, 0], [2, 1]]])


def test_simulated_synops_equal_spikes_times_fan_out(images):
    """Per synapse, the simulator's synop count equals each source neuron's spikes times its
    fan-out, on both paths (exact integer arithmetic)."""
    from bsnn_lava import convert, simulate
    from conftest import OptionAResNet, randomize_batchnorm
    from test_sim import _integerized

    x, y = images
    network = _integerized(convert(randomize_batchnorm(OptionAResNet()), x, window=2))
    steps = network.readout.schedule.offset_steps + 9
    step = simulate(network, x[:6], y[:6], steps=steps, method="step")
    fast = simulate(network, x[:6], y[:6], steps=steps, method="window")
    np.testing.assert_array_equal(step.n_synops_per_step, fast.n_synops_per_step)
    totals = dict(zip(step.synapse_names, step.n_synops_per_step.sum(axis=0)))
    for layer in network.layers[1:]:
        for s in layer.synapses:
            if s.source == network.input.name:
                continue
            fan_out = s.op.fan_out(network[s.source].shape)
            assert totals[f"{layer.name}<-{s.source}"] == int((step.n_spikes_per_neuron[s.source] * fan_out).sum())
    assert sum(totals.values()) > 0
