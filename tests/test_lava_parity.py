"""Spike-for-spike parity: the torch reference (step path) and the Lava CPU run agree on every spike of
every neuron at every step, on every readout potential, prediction and counter."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bsnn_lava import zoo
from bsnn_lava.conversion import convert
from bsnn_lava.datasets import load_digits_uint8
from bsnn_lava.demo import train_digits_model
from bsnn_lava.ir import Conv2d, Dense, GatedIF, Input, Network, Readout, Schedule, Synapse
from bsnn_lava.lava import run as lava_run
from bsnn_lava.lava.run import run_lava
from bsnn_lava.quantize import quantize
from bsnn_lava.data import as_nchw
from bsnn_lava.sim import frame_forward, simulate
from bsnn_lava.training import finetune
from conftest import randomize_batchnorm

pytestmark = pytest.mark.timeout(600)


def first_mismatch(ref, lava):
    """A message naming the first difference between two recorded runs, or ``None``."""
    for name, expected in ref.extras["spikes"].items():
        got = lava.extras["spikes"][name]
        if got.shape != expected.shape:
            return f"layer {name!r}: raster shape {got.shape} != reference {expected.shape}"
        diff = np.argwhere(got != expected)
        if diff.size:
            t, sample, *neuron = diff[0]
            return (f"layer {name!r}, neuron {tuple(int(i) for i in neuron)} (flat "
                    f"{int(np.ravel_multi_index(neuron, expected.shape[2:]))}), step {t}, sample {sample}: "
                    f"reference spike {expected[tuple(diff[0])]!r}, lava {got[tuple(diff[0])]!r} "
                    f"({len(diff)} mismatches in this layer)")
    diff = np.argwhere(lava.extras["readout_v"] != ref.extras["readout_v"])
    if diff.size:
        t, sample, k = diff[0]
        return (f"readout, class {k}, step {t}, sample {sample}: reference v {ref.extras['readout_v'][t, sample, k]}, "
                f"lava {lava.extras['readout_v'][t, sample, k]}")
    for field in ("layer_names", "synapse_names", "n_lost_input", "n_saturated", "n_sin", "n_neurons"):
        if getattr(ref, field) != getattr(lava, field):
            return f"{field}: reference {getattr(ref, field)}, lava {getattr(lava, field)}"
    for field in ("n_spikes_per_step", "n_synops_per_step", "predictions", "predictions_per_step", "ann_predictions",
                  "accuracy"):
        if not np.array_equal(getattr(ref, field), getattr(lava, field)):
            return f"{field}: reference {getattr(ref, field)}, lava {getattr(lava, field)}"
    for name, counts in ref.n_spikes_per_neuron.items():
        if not np.array_equal(counts, lava.n_spikes_per_neuron[name]):
            return f"n_spikes_per_neuron[{name!r}] differs"
    if ref.ann_accuracy != lava.ann_accuracy:
        return f"ann_accuracy: reference {ref.ann_accuracy}, lava {lava.ann_accuracy}"
    return None


def assert_parity(network, images, labels, steps, select_tag="fixed_pt", dtype=None, batch_size=1, frames=None):
    ref = simulate(network, images, labels, steps=steps, method="step", record=True, dtype=dtype, frames=frames)
    lava = run_lava(network, images, labels, steps=steps, select_tag=select_tag, record=True, progress=False,
                    batch_size=batch_size, frames=frames)
    mismatch = first_mismatch(ref, lava)
    assert mismatch is None, f"first mismatch: {mismatch}"
    return ref


# --- (a) hypothesis: small random graphs with residual adds --------------------------------------------

@st.composite
def random_float_networks(draw):
    """Input -> 1..3 conv or dense layers (each maybe with a residual synapse from an earlier layer,
    binary or graded spikes) -> readout; float weights, one neuron mode, random offsets; plus matching
    uint8 images (1 to 5) and the Lava batch size (1, 3 or 8: full, padded and capped batches)."""
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    mode = draw(st.sampled_from(["bistable", "if", "warmup"]))
    window = draw(st.integers(1, 3))
    frames = draw(st.sampled_from([None, 1, 2])) if mode == "bistable" else None
    frame_reset = mode == "bistable" and draw(st.booleans())
    schedule = lambda: Schedule(mode, draw(st.integers(-window, 6)), window, frames)
    channels, height, width = draw(st.integers(1, 2)), draw(st.integers(3, 6)), draw(st.integers(3, 6))
    layers = [Input("x", (channels, height, width), schedule())]
    for index in range(draw(st.integers(1, 3))):
        previous = layers[-1]
        if len(previous.shape) == 3 and draw(st.booleans()):
            kernel, stride, padding = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(0, 1))
            kernel = min(kernel, previous.shape[1] + 2 * padding, previous.shape[2] + 2 * padding)
            op = Conv2d(rng.normal(0, 1, (draw(st.integers(1, 3)), previous.shape[0], kernel, kernel)),
                        stride=(stride, stride), padding=(padding, padding))
        else:
            op = Dense(rng.normal(0, 1, (draw(st.integers(2, 6)), int(np.prod(previous.shape)))))
        shape = op.output_shape(previous.shape)
        synapses = [Synapse(previous.name, op)]
        sources = [layer for layer in layers if _residual_fits(layer.shape, shape)]
        if sources and draw(st.booleans()):  # residual add from an earlier layer
            source = sources[draw(st.integers(0, len(sources) - 1))]
            synapses.append(Synapse(source.name, _residual_op(rng, source.shape, shape)))
        channel_count = shape[0]
        layers.append(GatedIF(f"h{index}", shape, tuple(synapses), threshold=rng.uniform(0.5, 2.0, channel_count),
                              bias=rng.normal(0, 0.3, shape), v_init=rng.uniform(0, 1, channel_count),
                              schedule=schedule(), role=draw(st.sampled_from(["neuron", "relay"])),
                              frame_reset=frame_reset, payload_max=draw(st.sampled_from([1, 1, 3]))))
    classes = draw(st.integers(2, 4))
    synapses = [Synapse(layers[-1].name, Dense(rng.normal(0, 1, (classes, int(np.prod(layers[-1].shape))))))]
    layers.append(Readout("out", (classes,), tuple(synapses), bias=rng.normal(0, 0.2, classes), schedule=schedule()))
    images = rng.integers(0, 256, size=(draw(st.integers(1, 5)), channels, height, width), dtype=np.uint8)
    return (Network(layers), images, draw(st.integers(0, 6)), draw(st.integers(4, 14)),
            draw(st.sampled_from([1, 3, 8])))


def _residual_fits(source_shape, target_shape) -> bool:
    """Dense fits onto any flat layer; a valid (unpadded) convolution onto a (C, H, W) layer no larger."""
    return len(target_shape) == 1 or (len(source_shape) == 3 and source_shape[1] >= target_shape[1]
                                      and source_shape[2] >= target_shape[2])


def _residual_op(rng, source_shape, target_shape):
    """A random synapse from ``source_shape`` onto ``target_shape`` (see :func:`_residual_fits`)."""
    if len(target_shape) == 1:
        return Dense(rng.normal(0, 1, (target_shape[0], int(np.prod(source_shape)))))
    kernel = (source_shape[1] - target_shape[1] + 1, source_shape[2] - target_shape[2] + 1)
    return Conv2d(rng.normal(0, 1, (target_shape[0], source_shape[0], *kernel)))


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(random_float_networks())
def test_random_quantized_graphs_match_the_reference(case):
    network, images, headroom_bits, steps, batch_size = case
    # half the cases with calibrated rounding: per-neuron biases, error-feedback mantissas
    quantized = quantize(network, "loihi2", headroom_bits=headroom_bits,
                         calibration_images=images if headroom_bits % 2 else None)
    assert_parity(quantized, images, np.arange(len(images)) % 2, steps, batch_size=batch_size)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_saturation_and_lost_input_match_the_reference(batch_size):
    """A hand-built integer network with an 8-bit state that saturates, and a schedule that drops input;
    counted per image also when both images run in one batch."""
    x = Input("x", (1, 3, 3), Schedule("if", 0, 1))
    hidden = GatedIF("h", (2, 3, 3), (Synapse("x", Conv2d(np.full((2, 1, 3, 3), 3.0), padding=(1, 1), weight_exp=2)),),
                     threshold=np.array([90.0, 300.0]), bias=np.array([5.0, -7.0]), v_init=np.array([10.0, 0.0]),
                     schedule=Schedule("bistable", 1, 2))
    late = GatedIF("late", (4,), (Synapse("h", Dense(np.arange(-8.0, 64.0).reshape(4, 18))),
                                  Synapse("x", Dense(np.ones((4, 9))))),
                   threshold=50.0, bias=1.0, v_init=0.0, schedule=Schedule("warmup", 3, 3))
    out = Readout("out", (3,), (Synapse("late", Dense(np.array([[1.0, -1, 2, 0], [0, 3, 0, 1], [1, 1, 1, 1]]))),),
                  bias=np.array([0.0, 1.0, -1.0]), schedule=Schedule("if", 4, 1))
    network = Network((x, hidden, late, out), numeric="int", provenance={"quantization": {"state_bits": 8}})
    images = np.array([[[[255, 0, 17], [3, 200, 9], [0, 0, 255]]], [[[1, 2, 3], [4, 5, 6], [7, 8, 9]]]], np.uint8)
    ref = assert_parity(network, images, np.array([2, 0]), steps=16, batch_size=batch_size)
    assert sum(ref.n_saturated.values()) > 0 and sum(ref.n_lost_input.values()) > 0


def test_float_network_with_floating_pt_matches_the_float64_reference():
    """Exact where float64 is exact: a float network with integer-valued weights, thresholds and potentials."""
    rng = np.random.default_rng(1)
    x = Input("x", (1, 5, 5), Schedule("bistable", -2, 2))
    conv = GatedIF("c", (3, 5, 5), (Synapse("x", Conv2d(rng.integers(-4, 5, (3, 1, 3, 3)).astype(float),
                                                        padding=(1, 1))),),
                   threshold=np.array([200.0, 150.0, 300.0]), bias=0.0, v_init=np.array([100.0, 75.0, 150.0]),
                   schedule=Schedule("bistable", 1, 2))
    add = GatedIF("d", (3, 5, 5), (Synapse("c", Conv2d(rng.integers(-3, 4, (3, 3, 3, 3)).astype(float),
                                                       padding=(1, 1))),
                                   Synapse("x", Conv2d(rng.integers(0, 2, (3, 1, 1, 1)).astype(float)))),
                  threshold=40.0, bias=-1.0, v_init=20.0, schedule=Schedule("bistable", 4, 2))
    out = Readout("out", (4,), (Synapse("d", Dense(rng.integers(-5, 6, (4, 75)).astype(float))),), bias=0.0,
                  schedule=Schedule("bistable", 7, 2))
    network = Network((x, conv, add, out), numeric="float")
    images = rng.integers(0, 256, size=(3, 1, 5, 5), dtype=np.uint8)
    ref = assert_parity(network, images, np.array([0, 1, 2]), steps=20, select_tag="floating_pt", dtype=torch.float64)
    assert ref.n_spikes_per_step.sum() > 0


# --- (b) the digits demo network ------------------------------------------------------------------------

def test_digits_demo_network_on_ten_test_digits(monkeypatch):
    monkeypatch.setattr(lava_run, "ANN_BATCH", 4)  # SIN and ANN accuracy over batches of 4, 4 and 2 images
    x_train, y_train, x_test, y_test = load_digits_uint8()
    model = train_digits_model(x_train, y_train, epochs=1)
    network = quantize(convert(model, x_train[:200], neuron="bistable", window=2, v_init=0.5), "loihi2",
                       calibration_images=x_train[:200])
    steps = network.readout.schedule.offset_steps + 24
    ref = assert_parity(network, x_test[:10], y_test[:10], steps, batch_size=4)  # batches of 4, 4, 2 + 2 blank
    assert ref.n_spikes_per_step.sum() > 0 and ref.accuracy[-1] > 0.5


def test_finetuned_digits_network_with_frame_reset():
    """A clip-floor-shift digits network (frame reset, quantized): Lava equals the reference spike for
    spike over three frames, and both predict the integer frame's class at every complete frame."""
    x_train, y_train, x_test, y_test = load_digits_uint8()
    model = finetune(train_digits_model(x_train, y_train, epochs=1), x_train[:300], y_train[:300], window=2, epochs=1,
                     augment=False, progress=False, n_calibration=100)
    network = quantize(convert(model, x_train[:200]), "loihi2", calibration_images=x_train[:200])
    assert network.frame_reset
    frames = network.complete_frames(network.readout.schedule.offset_steps + 12)
    ref = assert_parity(network, x_test[:6], y_test[:6], frames[-1], frames="all")
    readout, _ = frame_forward(network, torch.as_tensor(as_nchw(x_test[:6], 1)))
    for t in frames:
        np.testing.assert_array_equal(ref.predictions_per_step[t - 1], readout.argmax(1).numpy())


def test_finetuned_digits_network_with_graded_spikes():
    """The same with graded spikes (payloads up to 4, one-step windows): spikes and payloads equal,
    and the integer frame's class at every complete frame."""
    x_train, y_train, x_test, y_test = load_digits_uint8()
    model = finetune(train_digits_model(x_train, y_train, epochs=1), x_train[:300], y_train[:300], window=4, epochs=1,
                     augment=False, progress=False, n_calibration=100)
    network = quantize(convert(model, x_train[:200], spikes="graded"), "loihi2", calibration_images=x_train[:200])
    assert network.spikes == "graded" and network.window_steps == 1
    frames = network.complete_frames(network.readout.schedule.offset_steps + 6)
    ref = assert_parity(network, x_test[:6], y_test[:6], frames[-1], frames="all")
    assert any(int(raster.max()) > 1 for raster in ref.extras["spikes"].values())  # payloads above 1 were sent
    readout, _ = frame_forward(network, torch.as_tensor(as_nchw(x_test[:6], 1)))
    for t in frames:
        np.testing.assert_array_equal(ref.predictions_per_step[t - 1], readout.argmax(1).numpy())


# --- (c) ResNet20 ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_resnet20_on_two_images_until_the_first_predictions():
    rng = np.random.default_rng(3)
    calibration = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    network = quantize(convert(randomize_batchnorm(zoo.cifar_resnet(20)), calibration, neuron="bistable", window=2,
                               mean=zoo.CIFAR_RESNET_MEAN, std=zoo.CIFAR_RESNET_STD), "loihi2")
    steps = network.readout.schedule.offset_steps + 4  # the readout integrates from its offset: 4 predictions
    ref = assert_parity(network, calibration[:2], np.array([3, 7]), steps)
    assert ref.n_spikes_per_step.sum() > 0


@pytest.mark.parametrize("batch_size", [1, 2])
def test_graded_resnet20_on_two_images_over_two_frames(batch_size):  # about 20 s each: 42 steps
    rng = np.random.default_rng(4)
    calibration = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    network = quantize(convert(randomize_batchnorm(zoo.cifar_resnet(20)), calibration, spikes="graded", levels=8,
                               mean=zoo.CIFAR_RESNET_MEAN, std=zoo.CIFAR_RESNET_STD), "loihi2")
    steps = network.complete_frames(10 ** 4)[1]
    ref = assert_parity(network, calibration[:2], np.array([3, 7]), steps, batch_size=batch_size, frames="all")
    assert ref.n_spikes_per_step.sum() > 0
