"""Quantizer and resource check: ranges, no overflow, float vs integer agreement, clear violations."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bsnn_lava import convert, simulate
from bsnn_lava.ir import Dense, GatedIF, Input, Network, Readout, Schedule, Synapse
from bsnn_lava.conversion.passes import assign_schedules
from bsnn_lava.datasets import load_digits_uint8
from bsnn_lava.quantize import quantize
from bsnn_lava.resources import check_resources
from bsnn_lava.sim.ann import ann_forward
from hw_profiles import load_profile

from conftest import OptionAResNet, SmallVGG, randomize_batchnorm

LOIHI2 = load_profile("loihi2")


def _random_model(seed: int, width: int, depth: int, residual: bool) -> nn.Module:
    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList([nn.Conv2d(1 if i == 0 else width, width, 3, padding=1) for i in range(depth)])
            self.fc = nn.Linear(width, 3)

        def forward(self, x):
            x = torch.relu(self.convs[0](x))
            for i, conv in enumerate(self.convs[1:]):
                y = conv(x)
                x = torch.relu(y + x) if residual and i % 2 == 1 else torch.relu(y)
            return self.fc(x.mean((2, 3)))

    return Net().eval()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), width=st.integers(1, 6), depth=st.integers(1, 4), residual=st.booleans(),
       window=st.integers(1, 4), neuron=st.sampled_from(["bistable", "if"]), correct=st.booleans())
@example(seed=199, width=1, depth=1, residual=False, window=3, neuron="if", correct=False)  # readout bias >> weights
def test_quantized_values_are_in_range_and_never_overflow(seed, width, depth, residual, window, neuron, correct):
    x = np.random.default_rng(seed).integers(0, 256, size=(6, 1, 6, 6), dtype=np.uint8)
    model = _random_model(seed, width, depth, residual)
    # percentile 100: the calibration inputs never drive a neuron above threshold
    network = quantize(convert(model, x, neuron=neuron, window=window, percentile=100.0), LOIHI2,
                       calibration_images=x if correct else None)
    assert network.numeric == "int"
    cap = 2 ** (LOIHI2.state_bits - 1 - 6 - math.ceil(math.log2(window + 1)))
    for layer in network.layers[1:]:
        for s in layer.synapses:
            assert -128 <= s.op.weight.min() and s.op.weight.max() <= 127
            assert 0 <= s.op.weight_exp <= LOIHI2.weight_exp_max
            assert np.array_equal(s.op.weight, np.round(s.op.weight))
        assert np.max(np.abs(layer.bias), initial=0) <= 4095 * 2 ** 7
        if isinstance(layer, GatedIF):
            assert 1 <= layer.threshold.min() and layer.threshold.max() <= cap
    assert check_resources(network, LOIHI2).fits
    result = simulate(network, x, steps=network.readout.schedule.offset_steps + 8 * window, method="step")
    assert sum(result.n_saturated.values()) == 0


def test_float_and_integer_spike_counts_agree_within_the_rounding_bound():
    """One spiking layer of 5 neurons fed by constant pixels.

    Rounding: every weight mantissa within half a step of ``w * scale / 2**e``, the threshold within
    1/2 of ``theta * scale``, the bias within half a step of ``b * scale``. Agreement: with dz the
    actual error of a neuron's per-step input (in float units) and dtheta that of its threshold,
    K windows of P steps of integration give cumulative spike counts that differ by at most
    ``K P (|dz| / theta + z |dtheta| / theta**2) + 2`` (the two floors), per neuron and image."""
    rng = np.random.default_rng(3)
    window, n_windows = 2, 40
    weight = rng.normal(0, 0.01, size=(5, 16))
    bias = rng.normal(0.2, 0.05, 5)
    layers = [Input("x", (1, 4, 4), Schedule("if", 0, 1)),
              GatedIF("h", (5,), (Synapse("x", Dense(weight)),), threshold=1.0, bias=bias,
                      v_init=0.5, schedule=Schedule("if", 0, 1)),
              Readout("out", (2,), (Synapse("h", Dense(rng.normal(size=(2, 5)))),), bias=0.0,
                      schedule=Schedule("if", 0, 1))]
    net = assign_schedules(Network(layers), "bistable", window)
    qnet = quantize(net, LOIHI2)
    q = qnet["h"]
    scale, w_exp = q.scale, q.synapses[0].op.weight_exp
    bias_exp = qnet.provenance["quantization"]["layers"]["h"]["bias_exp"]
    w_int = q.synapses[0].op.weight * 2.0 ** w_exp
    assert np.all(np.abs(w_int - weight * scale) <= 2.0 ** w_exp / 2 + 1e-9)
    assert np.all(np.abs(q.threshold - scale) <= 0.5)
    assert np.all(np.abs(q.bias - bias * scale) <= 2.0 ** bias_exp / 2 + 1e-9)

    x = rng.integers(0, 256, size=(20, 1, 4, 4), dtype=np.uint8)
    steps = net["h"].schedule.offset_steps + 2 * window * n_windows
    pixels = x.reshape(len(x), -1).astype(float)
    z = pixels @ weight.T + bias
    dz = np.abs(pixels @ (w_int / scale - weight).T + (q.bias / scale - bias))
    dtheta = abs(float(q.threshold) / scale - 1.0)
    bound = n_windows * window * (dz + np.abs(z) * dtheta) + 2
    total_float = 0
    for i in range(len(x)):
        n_float = simulate(net, x[i:i + 1], steps=steps, dtype=torch.float64).n_spikes["h"]
        n_int = simulate(qnet, x[i:i + 1], steps=steps).n_spikes["h"]
        assert abs(n_int - n_float) <= bound[i].sum(), i
        total_float += n_float
    assert total_float > 1000  # the layer is active, so the comparison means something


def test_residual_branches_land_in_the_target_scale(images):
    x, _ = images
    qnet = quantize(convert(randomize_batchnorm(OptionAResNet()), x, window=2), LOIHI2)
    layer = next(l for l in qnet.spiking_layers if len(l.synapses) == 2)
    exps = qnet.provenance["quantization"]["layers"][layer.name]["weight_exp"]
    assert [s.op.weight_exp for s in layer.synapses] == exps
    assert qnet.provenance["quantization"]["profile"] == "loihi2"


def _input_errors(float_net, int_net, x):
    """Per non-relay spiking layer, (z_int / scale - z_float) / threshold on images ``x`` (ANN rates,
    each network on its own rates): the RMS over neurons of its mean, and of its spread (standard
    deviation) over images."""
    images = torch.as_tensor(x).permute(0, 3, 1, 2)
    _, z_float = ann_forward(float_net, images)
    _, z_int = ann_forward(int_net, images)
    errors = {layer.name: (z_int[layer.name] / int_net[layer.name].scale - z_float[layer.name]) / float(np.max(layer.threshold))
              for layer in float_net.spiking_layers if layer.role == "neuron"}
    return ({name: float(e.mean(0).pow(2).mean().sqrt()) for name, e in errors.items()},
            {name: float(e.std(0).pow(2).mean().sqrt()) for name, e in errors.items()})


def test_calibrated_rounding_shrinks_the_input_error_on_new_images():
    """Calibrate on 40 images, measure on 40 others: bias correction removes most of the mean error
    rounding puts into each neuron's input; scales, exponents and ranges stay; relays keep exact
    identity weights and a zero bias."""
    rng = np.random.default_rng(5)
    x = np.clip(rng.normal(150, 50, size=(80, 16, 16, 3)), 0, 255).astype(np.uint8)
    torch.manual_seed(0)
    float_net = convert(randomize_batchnorm(OptionAResNet()), x[:40], window=2)
    plain = quantize(float_net, LOIHI2)
    calibrated = quantize(float_net, LOIHI2, calibration_images=x[:40])
    assert calibrated.provenance["quantization"]["calibration_images"] == 40
    assert plain.provenance["quantization"]["calibration_images"] == 0
    (mean_plain, spread_plain), (mean_cal, spread_cal) = (_input_errors(float_net, net, x[40:])
                                                          for net in (plain, calibrated))
    assert sum(mean_cal.values()) < 0.5 * sum(mean_plain.values()), (mean_plain, mean_cal)
    for layer_plain, layer_cal in zip(plain.layers[1:], calibrated.layers[1:]):
        assert layer_plain.scale == layer_cal.scale
        for a, b in zip(layer_plain.synapses, layer_cal.synapses):
            assert a.op.weight_exp == b.op.weight_exp
            assert -128 <= b.op.weight.min() and b.op.weight.max() <= 127
            assert np.array_equal(b.op.weight, np.round(b.op.weight))
        if getattr(layer_cal, "role", "") == "relay":
            assert np.all(layer_cal.bias == 0)
            assert all(np.array_equal(a.op.weight, b.op.weight) for a, b in zip(layer_plain.synapses, layer_cal.synapses))
    assert any(l.role == "relay" for l in calibrated.spiking_layers)


def _digits_dense_net():
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.02, size=(32, 64))
    layers = [Input("x", (1, 8, 8), Schedule("if", 0, 1)),
              GatedIF("h", (32,), (Synapse("x", Dense(weight)),), threshold=1.0, bias=0.1, v_init=0.5,
                      schedule=Schedule("if", 0, 1)),
              Readout("out", (10,), (Synapse("h", Dense(rng.normal(size=(10, 32)))),), bias=0.0,
                      schedule=Schedule("if", 0, 1))]
    return assign_schedules(Network(layers), "bistable", 2), weight


def test_error_feedback_rounding_beats_rounding_to_nearest_on_real_inputs():
    """A dense layer reading real, correlated pixels (scikit-learn digits): the spread of its input
    error over new images, in thresholds, is well below what rounding each weight to nearest gives."""
    x_train, _, x_test, _ = load_digits_uint8()
    net, weight = _digits_dense_net()
    pixels = x_test.reshape(len(x_test), -1).astype(float)
    pixels -= pixels.mean(axis=0)

    def spread(qnet):
        q = qnet["h"]
        w_float = q.synapses[0].op.weight * 2.0 ** q.synapses[0].op.weight_exp / q.scale
        return float(np.sqrt(np.mean((pixels @ (w_float - weight).T) ** 2)))

    nearest, feedback = spread(quantize(net, LOIHI2)), spread(quantize(net, LOIHI2, calibration_images=x_train[:500]))
    assert feedback < 0.8 * nearest, (nearest, feedback)


def test_error_feedback_rounding_is_the_same_in_any_block_size_and_capped_by_fan_in(monkeypatch):
    """GPTQ's lazy batch updates change when the later columns are updated, not the rounding: one
    column at a time, blocks of 5 and one block of all 64 give the same mantissas. A layer reading
    more inputs than the cap keeps rounding to nearest (its provenance says so)."""
    import bsnn_lava.quantize as quantize_module

    x_train, _, _, _ = load_digits_uint8()
    net, _ = _digits_dense_net()
    plain = quantize(net, LOIHI2)
    rates = {"x": torch.as_tensor(x_train[:300], dtype=torch.float64).reshape(300, 1, 8, 8)}
    mantissas = [quantize_module._error_feedback_rounding(net["h"], plain["h"], rates, 127, block)[0].op.weight
                 for block in (1, 5, 128)]
    assert not np.array_equal(mantissas[0], plain["h"].synapses[0].op.weight)
    for other in mantissas[1:]:
        np.testing.assert_array_equal(other, mantissas[0])
    calibrated = quantize(net, LOIHI2, calibration_images=x_train[:300])
    np.testing.assert_array_equal(calibrated["h"].synapses[0].op.weight, mantissas[0])
    assert calibrated.provenance["quantization"]["layers"]["h"]["rounding"] == "error feedback"
    monkeypatch.setattr(quantize_module, "MAX_ERROR_FEEDBACK_FAN_IN", 63)  # the layer reads 64 pixels
    capped = quantize(net, LOIHI2, calibration_images=x_train[:300])
    np.testing.assert_array_equal(capped["h"].synapses[0].op.weight, plain["h"].synapses[0].op.weight)
    assert capped.provenance["quantization"]["layers"]["h"]["rounding"] == "nearest"
    assert not np.array_equal(capped["h"].bias, plain["h"].bias)  # bias correction still applies


def test_resource_check_fits_and_names_an_oversized_layer():
    small = quantize(convert(randomize_batchnorm(SmallVGG()), np.zeros((2, 16, 16, 3), dtype=np.uint8)), "loihi2")
    report = check_resources(small, "loihi2")
    assert report.fits and report.n_cores >= len(small.layers) - 1
    assert "fits: no limit violated" in report.format()
    # one neuron reading 200,000 inputs: 1.6 Mbit of synapses > Loihi 1's 1 Mbit core, and > 4096 axons
    wide = Network([Input("x", (1, 200, 1000), Schedule("if", 0, 1)),
                    GatedIF("wide", (4,), (Synapse("x", Dense(np.ones((4, 200_000)))),), threshold=1.0, bias=0.0,
                            v_init=0.0, schedule=Schedule("if", 1, 1)),
                    Readout("out", (2,), (Synapse("wide", Dense(np.ones((2, 4)))),), bias=0.0,
                            schedule=Schedule("if", 2, 1))], numeric="int")
    report = check_resources(wide, "loihi1")
    assert not report.fits
    text = report.format()
    assert "layer 'wide': one neuron needs 1600000 bits of synaptic memory" in text
    assert "layer 'wide': one neuron reads 200000 source neurons, a core has 4096 input axons" in text
    assert "the pixels reach the first layer as graded spikes, which need 8 payload bits; loihi1 has 0" in text
    assert "Deploy on Loihi 2 (bsnn check NET --hw loihi2)" in text and "first-layer bias" not in text


def test_range_violations_are_reported():
    bad = Network([Input("x", (1, 2, 2), Schedule("if", 0, 1)),
                   GatedIF("h", (2,), (Synapse("x", Dense(np.full((2, 4), 300.0), weight_exp=9)),), threshold=2.0 ** 24,
                           bias=0.0, v_init=0.0, schedule=Schedule("if", 1, 1)),
                   Readout("out", (2,), (Synapse("h", Dense(np.eye(2))),), bias=1e9, schedule=Schedule("if", 2, 1))],
                  numeric="int")
    text = check_resources(bad, "loihi2").format()
    assert "weight mantissa range [300, 300] exceeds 8-bit [-128, 127]" in text
    assert "weight_exp 9 outside [-8, 7]" in text
    assert "layer 'h': threshold 16777216 exceeds" in text
    assert "layer 'out': bias 1000000000 exceeds" in text


def test_quantize_refuses_bad_arguments(images):
    x, _ = images
    net = convert(randomize_batchnorm(OptionAResNet()), x)
    with pytest.raises(ValueError, match="headroom_bits"):
        quantize(net, "loihi2", headroom_bits=30)
    with pytest.raises(ValueError, match="already quantized"):
        quantize(quantize(net), "loihi2")
