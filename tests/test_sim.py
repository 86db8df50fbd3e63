"""Reference simulator: SIN, relays, lost input, window path == step path, accuracy curve."""
import numpy as np
import pytest
import torch

from bsnn_lava import zoo
from bsnn_lava.conversion import convert
from bsnn_lava.conversion.passes import assign_schedules, insert_relays
from bsnn_lava.dynamics import SYNAPSE_DELAY_STEPS
from bsnn_lava.ir import Conv2d, Dense, GatedIF, Input, Network, Readout, Schedule, Synapse, replace
from bsnn_lava.sim import simulate, window_path_applies

from conftest import OptionAResNet, SmallVGG, TVStyleResNet, randomize_batchnorm

UNSET = Schedule("if", 0, 1)


def _phase_lead_network(mode: str, window: int = 2) -> Network:
    """E copies the pixel (fires every step in IF), I copies E one layer later, C = E - I.

    The ANN pre-activation of C is 0, so every spike of C is a spike of an inactivated neuron."""
    one = lambda: Dense(np.ones((1, 1)))
    layers = [Input("x", (1, 1, 1), UNSET),
              GatedIF("E", (1,), (Synapse("x", one()),), threshold=1.0, bias=0.0, v_init=0.0, schedule=UNSET),
              GatedIF("I", (1,), (Synapse("E", one()),), threshold=1.0, bias=0.0, v_init=0.0, schedule=UNSET),
              GatedIF("C", (1,), (Synapse("E", one()), Synapse("I", Dense(-np.ones((1, 1))))), threshold=1.0,
                      bias=0.0, v_init=0.0, schedule=UNSET),
              Readout("out", (2,), (Synapse("C", Dense(np.array([[1.0], [-1.0]]))),), bias=0.0, schedule=UNSET)]
    network = Network(layers)
    if mode != "if":
        network = insert_relays(network)
    return assign_schedules(network, mode, window)


def test_sin_bistable_silent_where_if_fires():
    pixels = np.full((3, 1, 1, 1), 255, dtype=np.uint8)
    bistable = simulate(_phase_lead_network("bistable"), pixels, steps=40, method="step")
    plain_if = simulate(_phase_lead_network("if"), pixels, steps=40, method="step")
    assert bistable.n_spikes["C"] == 0 and bistable.n_sin["C"] == 0
    assert plain_if.n_spikes["C"] == 3 and plain_if.n_sin["C"] == 3  # one phase-lead spike per image
    assert bistable.n_spikes["E"] > 0 and plain_if.n_spikes["E"] > 0
    assert sum(bistable.n_lost_input.values()) == 0 and sum(plain_if.n_lost_input.values()) == 0


def _demo_like(seed=0, model_cls=OptionAResNet):
    torch.manual_seed(seed)
    return randomize_batchnorm(model_cls(), seed)


def test_relays_repeat_their_source_one_window_later(images):
    x, y = images
    window = 3
    network = convert(_demo_like(), x, neuron="bistable", window=window)
    result = simulate(network, x, y, steps=60, method="step")
    lag = window + SYNAPSE_DELAY_STEPS
    relays = [l for l in network.spiking_layers if l.role == "relay"]
    assert relays
    for relay in relays:
        source = relay.synapses[0].source
        src = result.n_spikes_per_step[:, result.layer_names.index(source)]
        rel = result.n_spikes_per_step[:, result.layer_names.index(relay.name)]
        assert src.sum() > 0
        np.testing.assert_array_equal(rel[lag:], src[:-lag])
        assert rel[:lag].sum() == 0


def test_without_relays_the_shortcut_input_is_lost_and_counted(images):
    x, y = images
    with_relays = convert(_demo_like(), x, neuron="bistable", window=2)
    without = convert(_demo_like(), x, neuron="bistable", window=2, relays=False)
    assert sum(simulate(with_relays, x[:4], steps=40, method="step").n_lost_input.values()) == 0
    lost = simulate(without, x[:4], steps=40, method="step").n_lost_input
    assert sum(lost.values()) > 0


@pytest.mark.parametrize("depth", [20, 56])
@pytest.mark.parametrize("neuron", ["bistable", "if", "warmup"])
def test_zoo_networks_lose_no_input(depth, neuron):
    model = randomize_batchnorm(zoo.cifar_resnet(depth))
    x = np.random.default_rng(1).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    network = convert(model, x, neuron=neuron, window=1, mean=zoo.CIFAR_RESNET_MEAN, std=zoo.CIFAR_RESNET_STD)
    steps = network.readout.schedule.offset_steps + 4
    result = simulate(network, x[:2], steps=steps, method="step")
    assert sum(result.n_lost_input.values()) == 0
    assert result.n_spikes[network.spiking_layers[-1].name] > 0  # activity reached the last layer


def _integerized(network: Network, scale: float = 64.0) -> Network:
    """Round every quantity to an integer in a common scale (a stand-in quantization for exactness tests)."""
    layers = [network.input]
    for layer in network.layers[1:]:
        synapses = tuple(Synapse(s.source, replace(s.op, weight=np.round(s.op.weight * scale))) for s in layer.synapses)
        changes = dict(synapses=synapses, bias=np.round(layer.bias * scale))
        if isinstance(layer, GatedIF):
            threshold = np.maximum(np.round(layer.threshold * scale), 1)
            changes.update(threshold=threshold, v_init=np.floor(threshold / 2))
        layers.append(replace(layer, **changes))
    return network.replace(layers=tuple(layers), numeric="int")


@pytest.mark.parametrize("model_cls", [OptionAResNet, SmallVGG, TVStyleResNet])
@pytest.mark.parametrize("window", [1, 2, 3, 5])
def test_window_path_equals_step_path(model_cls, window, images):
    x, y = images
    network = _integerized(convert(_demo_like(window, model_cls), x, neuron="bistable", window=window))
    assert window_path_applies(network)
    steps = network.readout.schedule.offset_steps + 7 * window + 1  # ends inside a window
    step = simulate(network, x[:8], y[:8], steps=steps, method="step")
    fast = simulate(network, x[:8], y[:8], steps=steps, method="window")
    np.testing.assert_array_equal(fast.n_spikes_per_step, step.n_spikes_per_step)
    np.testing.assert_array_equal(fast.accuracy, step.accuracy)
    np.testing.assert_array_equal(fast.predictions, step.predictions)
    assert fast.n_sin == step.n_sin
    assert step.n_spikes_per_step.sum() > 0


def test_window_path_refused_where_it_does_not_apply(images):
    x, _ = images
    network = convert(_demo_like(), x, neuron="if")
    assert not window_path_applies(network)
    with pytest.raises(ValueError, match="window path needs a bistable network"):
        simulate(network, x, steps=4, method="window")
    assert simulate(network, x[:2], steps=4).method == "step"


def test_accuracy_curve_reaches_the_ann_on_a_separable_task():
    """Two classes that a one-layer network separates: the SNN's accuracy per step climbs to the
    ANN's, and steps_to_within finds the first crossing."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, size=40)
    x = np.where(y[:, None, None, None] == 1, 200, 20).astype(np.uint8) + rng.integers(0, 30, (40, 1, 2, 2)).astype(np.uint8)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 2), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2) / 4)
        model[0].bias.copy_(torch.tensor([-0.4, 0.4]))
        model[3].weight.copy_(torch.tensor([[-1.0, 1.0], [1.0, -1.0]]))
        model[3].bias.zero_()
    result = simulate(convert(model, x, window=2), x, y, steps=30)
    assert result.ann_accuracy == 1.0
    assert result.accuracy[-1] == 1.0
    reach = result.steps_to_within(0.5)
    assert reach is not None and result.accuracy[reach - 1] == 1.0 and result.accuracy[reach - 2] < 1.0
    assert len(result.accuracy) == 30


def test_simulate_rejects_bad_input(images):
    x, y = images
    network = convert(_demo_like(), x)
    with pytest.raises(ValueError, match=r"shape \(2, 8, 8, 3\) do not fit the network's input \(C, H, W\) = \(3, 16, 16\)"):
        simulate(network, np.zeros((2, 8, 8, 3), dtype=np.uint8), steps=4)
    with pytest.raises(ValueError, match="labels"):
        simulate(network, x, y[:3], steps=4)
    with pytest.raises(ValueError, match="steps"):
        simulate(network, x, steps=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        simulate(network, x, y, steps=4, batch_size=0)
    with pytest.raises(ValueError, match=r"label 3 is 110 \(1 of 24 outside\)"):
        simulate(network, x, np.where(np.arange(len(y)) == 3, 110, y), steps=4)
    with pytest.raises(ValueError, match=r"label 0 is -1"):
        simulate(network, x, y - 1 - y, steps=4)
    with pytest.raises(ValueError, match="no images"):
        simulate(network, x[:0], y[:0], steps=4)


def test_first_and_sustained_crossings():
    from bsnn_lava.sim.result import sustained_crossing

    curve = np.array([0.1, 0.9, 0.8, 0.95, 0.95])
    assert sustained_crossing(curve, 0.9) == 4
    assert sustained_crossing(curve, 0.05) == 1
    assert sustained_crossing(np.array([0.9, 0.5]), 0.9) is None


@pytest.mark.parametrize("model_cls,saturating", [(OptionAResNet, False), (TVStyleResNet, False),
                                                   (OptionAResNet, True)])
def test_quantized_window_path_in_float32_equals_the_float64_step_path(model_cls, saturating, images):
    """A network from :func:`quantize` (thresholds near 2**15, weights up to 127 * 2**7): the window
    path computes in float32 and still reproduces the float64 step path step for step, per image.
    ``saturating``: no headroom and low thresholds, so overdriven neurons reach the 24-bit limit and
    the window path integrates those windows step by step, saturating as the step path does."""
    from bsnn_lava.quantize import quantize

    x, y = images
    network = convert(_demo_like(1, model_cls), x, neuron="bistable", window=2, v_init=0.5,
                      percentile=50.0 if saturating else 99.9)
    network = quantize(network, "loihi2", headroom_bits=0 if saturating else 6)
    assert max(float(np.max(layer.threshold)) for layer in network.spiking_layers) > 2 ** 13
    steps = network.readout.schedule.offset_steps + (40 if saturating else 9) * 2 + 1
    step = simulate(network, x[:8], y[:8], steps=steps, method="step")
    fast = simulate(network, x[:8], y[:8], steps=steps)
    assert fast.method == "window" and fast.extras["window_arithmetic"] == "float32"
    assert (sum(step.n_saturated.values()) > 0) == saturating
    assert (fast.extras["n_windows_stepwise"] > 0) == saturating
    wide = simulate(network, x[:8], y[:8], steps=steps, dtype=torch.float64)
    assert wide.extras["window_arithmetic"] == "float64"
    for result in (fast, wide):
        np.testing.assert_array_equal(result.predictions_per_step, step.predictions_per_step)
        np.testing.assert_array_equal(result.n_spikes_per_step, step.n_spikes_per_step)
        np.testing.assert_array_equal(result.n_synops_per_step, step.n_synops_per_step)
        for name in step.n_spikes_per_neuron:
            np.testing.assert_array_equal(result.n_spikes_per_neuron[name], step.n_spikes_per_neuron[name])
        assert result.n_sin == step.n_sin and result.n_saturated == step.n_saturated
    assert step.n_spikes_per_step[:, -1].sum() > 0  # activity reached the last spiking layer


def test_predictions_per_step_give_the_accuracy_curve(images):
    x, y = images
    network = convert(_demo_like(), x, neuron="bistable", window=2)
    result = simulate(network, x[:10], y[:10], steps=30)
    assert result.predictions_per_step.shape == (30, 10)
    np.testing.assert_array_equal(result.predictions_per_step[-1], result.predictions)
    np.testing.assert_allclose((result.predictions_per_step == y[:10]).mean(axis=1), result.accuracy)


def test_float32_window_path_refused_where_partial_sums_exceed_2_to_24(images):
    """A synapse whose partial sums can pass 2**24 is not exact in float32: the window path then
    computes in float64 (and still equals the step path)."""
    x, y = images
    network = _integerized(convert(_demo_like(), x, neuron="bistable", window=2), scale=2.0 ** 20)
    steps = network.readout.schedule.offset_steps + 5
    fast = simulate(network, x[:4], y[:4], steps=steps, method="window")
    assert fast.extras["window_arithmetic"] == "float64"
    step = simulate(network, x[:4], y[:4], steps=steps, method="step")
    np.testing.assert_array_equal(fast.predictions_per_step, step.predictions_per_step)


def test_paired_comparison_counts_discordant_images(images):
    """compare_runs against a hand count: difference, discordant images, paired standard error."""
    from bsnn_lava.sim import compare_runs

    x, y = images
    network = convert(_demo_like(), x, neuron="bistable", window=2)
    a = simulate(network, x[:12], y[:12], steps=24)
    b = simulate(convert(_demo_like(), x, neuron="if"), x[:12], y[:12], steps=24)
    y = np.asarray(y[:12])
    both = compare_runs(a, b, y)
    t = 23
    right_a, right_b = a.predictions_per_step[t] == y, b.predictions_per_step[t] == y
    n_a, n_b = int(np.sum(right_a & ~right_b)), int(np.sum(right_b & ~right_a))
    assert (both.only_a[t], both.only_b[t]) == (n_a, n_b)
    d = right_a.astype(float) - right_b.astype(float)
    np.testing.assert_allclose(both.difference, a.accuracy - b.accuracy)
    np.testing.assert_allclose(both.standard_error[t], d.std() / np.sqrt(12))
    assert both.ann_accuracy == a.ann_accuracy
    first = compare_runs(a, b, y, samples=slice(0, 5))
    assert first.n_samples == 5
    np.testing.assert_allclose(first.accuracy_a, (a.predictions_per_step[:, :5] == y[:5]).mean(axis=1))
    assert compare_runs(a, a, y).standard_error.max() == 0
    with pytest.raises(ValueError, match="labels for 12 images"):
        compare_runs(a, b, y[:5])


class _SlicesOnly:
    """Images read a slice at a time (as an h5py dataset or a memory map is), refusing to be converted
    whole; records the slices read."""

    def __init__(self, x):
        self.x, self.shape, self.reads = x, x.shape, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        assert isinstance(index, slice), index
        self.reads.append(index)
        return self.x[index]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole image set was converted at once")


@pytest.mark.parametrize("stream", [False, True])
def test_simulate_converts_one_batch_at_a_time(images, stream):
    """No copy of the whole image set in the arithmetic's dtype: a run reads a batch (a round) at a
    time, and gives what the array gives."""
    x, y = images
    network = convert(_demo_like(), x, frame_reset=True)
    run = dict(stream=True) if stream else dict(steps=20)
    lazy = _SlicesOnly(x)
    result = simulate(network, lazy, y, batch_size=5, **run)
    whole = simulate(network, x, y, batch_size=5, **run)
    np.testing.assert_array_equal(result.predictions, whole.predictions)
    np.testing.assert_array_equal(result.n_spikes_per_step, whole.n_spikes_per_step)
    assert max(len(range(*s.indices(len(x)))) for s in lazy.reads) <= 5
    with pytest.raises(ValueError, match=r"images of shape \(24, 16, 16, 3\) do not fit the network's input"):
        simulate(convert(_demo_like(), x[:, :8, :8]), _SlicesOnly(x), steps=4)


def test_record_keeps_only_the_layers_named(images):
    x, y = images
    network = convert(_demo_like(), x)
    named = [network.spiking_layers[0].name, network.spiking_layers[-1].name]
    every = simulate(network, x[:2], y[:2], steps=12, method="step", record=True)
    some = simulate(network, x[:2], y[:2], steps=12, method="step", record=named)
    assert set(some.extras["spikes"]) == set(named) and len(every.extras["spikes"]) > len(named)
    for name in named:
        np.testing.assert_array_equal(some.extras["spikes"][name], every.extras["spikes"][name])
    np.testing.assert_array_equal(some.extras["readout_v"], every.extras["readout_v"])
    np.testing.assert_array_equal(some.n_spikes_per_step, every.n_spikes_per_step)
    with pytest.raises(ValueError, match="record: 'nope' is not a spiking layer"):
        simulate(network, x[:2], steps=12, method="step", record=["nope"])
