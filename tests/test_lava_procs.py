"""Lava processes, builder and runner: imports, validation, counters, files, errors, the Loihi 2 refusal."""
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import netx_export
from bsnn_lava.ir import Conv2d, Dense, GatedIF, Input, Network, Readout, Schedule, Synapse
from bsnn_lava.ir.nodes import replace
from bsnn_lava.lava import run as lava_run
from bsnn_lava.lava.build import build
from bsnn_lava.lava.procs import (EventCount, GatedIF as GatedIFProcess, PixelInput, Readout as ReadoutProcess,
                                  conv_synapse, dense_synapse)
from bsnn_lava.lava.procs.models import conv_matrix
from bsnn_lava.lava.run import LoihiUnavailableError, run_lava
from bsnn_lava.sim import simulate

pytestmark = pytest.mark.timeout(300)


def tiny_network(weight_exp=0, numeric="int"):
    """Input (1, 3, 3) -> conv (2, 3, 3) -> dense (4,) with a residual from the input -> readout (3,)."""
    x = Input("x", (1, 3, 3), Schedule("if", 0, 1))
    conv = GatedIF("c", (2, 3, 3), (Synapse("x", Conv2d(np.array([[[[1.0, 0, 2], [0, 3, 0], [1, 0, 1]]]] * 2),
                                                        padding=(1, 1), weight_exp=weight_exp)),),
                   threshold=np.array([300.0, 500.0]), bias=np.array([2.0, -3.0]), v_init=np.array([150.0, 0.0]),
                   schedule=Schedule("if", 1, 1))
    dense = GatedIF("d", (4,), (Synapse("c", Dense(np.arange(-30.0, 42.0).reshape(4, 18))),
                                Synapse("x", Dense(np.ones((4, 9))))),
                    threshold=40.0, bias=1.0, v_init=0.0, schedule=Schedule("if", 2, 1))
    out = Readout("out", (3,), (Synapse("d", Dense(np.array([[1.0, -1, 2, 0], [0, 3, 0, 1], [1, 1, 1, 1]]))),),
                  bias=np.array([0.0, 1.0, -1.0]), schedule=Schedule("if", 3, 1))
    return Network((x, conv, dense, out), numeric=numeric)


IMAGES = np.array([[[[255, 0, 17], [3, 200, 9], [0, 0, 255]]], [[[1, 2, 3], [4, 5, 6], [7, 8, 9]]]], np.uint8)


def test_process_models_never_import_torch():
    code = ("import sys; import bsnn_lava.lava.procs.models, bsnn_lava.lava.procs.process; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("out_ch,in_ch,kernel,size,stride,padding", [
    (3, 2, (3, 3), (5, 6), (1, 1), (1, 1)), (4, 3, (3, 2), (7, 5), (2, 1), (1, 0)),
    (2, 2, (1, 1), (4, 4), (2, 2), (0, 0)), (5, 3, (3, 3), (8, 8), (2, 2), (2, 1)),
    (2, 1, (4, 4), (4, 4), (1, 1), (0, 0))])
def test_conv_matrix_is_torch_conv2d(out_ch, in_ch, kernel, size, stride, padding):
    rng = np.random.default_rng(0)
    weight = rng.integers(-5, 6, (out_ch, in_ch, *kernel)).astype(float)
    x = rng.integers(0, 3, (in_ch, *size)).astype(float)
    expected = F.conv2d(torch.tensor(x)[None], torch.tensor(weight), None, stride, padding)[0].numpy()
    matrix = conv_matrix(weight, (in_ch, *size), stride, padding)
    assert np.array_equal(matrix @ x.ravel(), expected.ravel())
    weight[0, 0] = 0  # some zero weights: the fan-out counts nonzero ones only
    # the senders count synaptic operations with the IR's fan-out: it must be the matrix's column counts
    fan_out = Conv2d(weight, stride=stride, padding=padding).fan_out((in_ch, *size))
    assert np.array_equal(fan_out.ravel(), conv_matrix(weight, (in_ch, *size), stride, padding).getnnz(axis=0))


@pytest.mark.parametrize("make, message", [
    (lambda: GatedIFProcess(shape=(2,), synapses=(), threshold=1, bias=0, v_init=0, mode="lif", offset_steps=0, window_steps=1,
                            steps_per_sample=4), "mode must be one of"),
    (lambda: GatedIFProcess(shape=(2,), synapses=(), threshold=1, bias=0, v_init=0, mode="if", offset_steps=0, window_steps=0,
                            steps_per_sample=4), "window_steps must be an integer >= 1"),
    (lambda: GatedIFProcess(shape=(2,), synapses=(), threshold=[1, 0], bias=0, v_init=0, mode="if", offset_steps=0,
                            window_steps=1, steps_per_sample=4), "threshold must be > 0"),
    (lambda: GatedIFProcess(shape=(2,), synapses=(), threshold=1, bias=[1, 2, 3], v_init=0, mode="if", offset_steps=0,
                            window_steps=1, steps_per_sample=4), r"bias must be a scalar or have shape \(2,\)"),
    (lambda: GatedIFProcess(shape=(2,), synapses=(), threshold=1, bias=0, v_init=0, mode="if", offset_steps=0, window_steps=1,
                            steps_per_sample=4, state_bits=1), "state_bits must be None"),
    (lambda: GatedIFProcess(shape=(2,), synapses=(), threshold=1, bias=0, v_init=0, mode="if", offset_steps=0, window_steps=1,
                            steps_per_sample=4, log_paths={"counts": "a"}), r"missing \['totals'\]"),
    (lambda: ReadoutProcess(shape=(2,), synapses=(), bias=0, mode="if", offset_steps=0.5, window_steps=1, steps_per_sample=4),
     "offset_steps must be an integer"),
    (lambda: PixelInput(images=np.full((1, 1, 2, 2), 256), mode="if", offset_steps=0, window_steps=1,
                        steps_per_sample=4), "0..255"),
    (lambda: PixelInput(images=np.zeros((3, 1, 2, 2)), mode="if", offset_steps=0, window_steps=1,
                        steps_per_sample=4, batch_size=2), "multiple of batch_size 2"),
    (lambda: GatedIFProcess(shape=(2,), synapses=(), threshold=1, bias=0, v_init=0, mode="if", offset_steps=0,
                            window_steps=1, steps_per_sample=4, batch_size=0), "batch_size must be an integer >= 1"),
    (lambda: conv_synapse(np.ones((2, 3, 3, 3)), in_shape=(2, 4, 4)), "does not fit"),
    (lambda: dense_synapse(np.ones((2, 5)), in_shape=(2, 2)), r"\(out_features, 4\)"),
    (lambda: dense_synapse(np.ones((2, 4)), in_shape=(4,), weight_exp=0.5), "weight_exp"),
    (lambda: dense_synapse(np.ones((2, 4)), in_shape=(4,), max_input=0), "max_input must be an integer >= 1"),
    (lambda: ReadoutProcess(shape=(3,), synapses=[dense_synapse(np.ones((2, 4)), (4,))], bias=0, mode="if",
                            offset_steps=0, window_steps=1, steps_per_sample=4), r"delivers shape \(2,\)"),
    (lambda: ReadoutProcess(shape=(2,), synapses=[dense_synapse(np.ones((2, 4)), (4,))] * 5, bias=0, mode="if",
                            offset_steps=0, window_steps=1, steps_per_sample=4), "at most 4 incoming synapses"),
    (lambda: GatedIFProcess(shape=(2,), synapses=(), threshold=1, bias=0, v_init=0, mode="if", offset_steps=0,
                            window_steps=1, steps_per_sample=4, fan_outs=[np.ones(3)]), "every fan-out must hold 2"),
])
def test_processes_validate_their_parameters(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_runner_refuses_what_the_models_cannot_run_exactly():
    with pytest.raises(ValueError, match="select_tag 'fixed_pt' runs int networks; this one is float"):
        run_lava(tiny_network(numeric="float"), IMAGES, steps=4, progress=False)
    with pytest.raises(ValueError, match="'floating_pt' runs float networks"):
        run_lava(tiny_network(), IMAGES, steps=4, select_tag="floating_pt", progress=False)
    with pytest.raises(ValueError, match=r"layer 'c': synapse from 'x' has weight_exp -1"):
        run_lava(tiny_network(weight_exp=-1), IMAGES, steps=4, progress=False)
    with pytest.raises(ValueError, match="select_tag must be one of"):
        run_lava(tiny_network(), IMAGES, steps=4, select_tag="bit_accurate_loihi", progress=False)
    with pytest.raises(ValueError, match="backend must be one of"):
        run_lava(tiny_network(), IMAGES, steps=4, backend="gpu", progress=False)
    with pytest.raises(ValueError, match=r"images of shape \(1, 4, 4\) do not fit the network.s input \(C, H, W\) = \(1, 3, 3\)"):
        run_lava(tiny_network(), np.zeros((1, 4, 4), np.uint8), steps=4, progress=False)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        run_lava(tiny_network(), IMAGES, steps=0, progress=False)
    network = tiny_network()
    crowded = replace(network["out"], synapses=network["out"].synapses * 5)
    with pytest.raises(ValueError, match="layer 'out' has 5 incoming synapses; the Lava layer processes take at most 4"):
        run_lava(network.with_layers((*network.layers[:3], crowded)), IMAGES, steps=4, progress=False)


def test_loihi2_without_lava_loihi_says_what_is_missing(monkeypatch):
    from lava.utils import loihi

    monkeypatch.setattr(loihi, "is_installed", lambda *args: False)
    with pytest.raises(LoihiUnavailableError, match="lava-loihi.*INRC.*NcProcessModel.*docs/loihi.md"):
        run_lava(tiny_network(), IMAGES, steps=4, backend="loihi2", progress=False)


def test_loihi2_with_lava_loihi_still_needs_chip_models(monkeypatch):
    from lava.utils import loihi

    monkeypatch.setattr(loihi, "is_installed", lambda *args: True)
    with pytest.raises(LoihiUnavailableError,
                       match="GatedIF, PixelInput, Readout.*not on the chip"):
        run_lava(tiny_network(), IMAGES, steps=4, backend="loihi2", progress=False)


def test_a_model_that_fails_to_build_gives_a_value_error_naming_the_layer(monkeypatch):
    from bsnn_lava.lava.procs import models

    build_synapses = models.SynapticInput.__init__

    def fail(self, synapses, batch_size, integer, layer):
        if layer == "c":
            raise RuntimeError(f"process {layer!r}: cannot build its synapses")
        build_synapses(self, synapses, batch_size, integer, layer)

    monkeypatch.setattr(models.SynapticInput, "__init__", fail)  # inherited by the forked workers
    with pytest.raises(ValueError, match=r"Lava could not compile or start layer 'c': process 'c': cannot build"):
        run_lava(tiny_network(), IMAGES, steps=4, progress=False)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_counter_vars_and_result_fields_agree_with_the_reference(tmp_path, batch_size):
    network, steps = tiny_network(), 9
    ref = simulate(network, IMAGES, np.array([1, 2]), steps=steps, method="step")
    path = netx_export.write(network, tmp_path / "tiny.h5")
    result = run_lava(path, IMAGES, np.array([1, 2]), steps=steps, progress=False,  # from the HDF5 file
                      batch_size=batch_size)
    assert result.method == "lava" and result.extras["select_tag"] == "fixed_pt"
    timing = result.extras["timing"]
    assert set(timing) == {"compile_start_s", "run_s", "ms_per_step", "image_steps_per_s", "batch_size", "n_processes"}
    assert timing["n_processes"] == 4  # one per layer
    assert timing["batch_size"] == batch_size
    assert timing["image_steps_per_s"] == pytest.approx(2 * steps / timing["run_s"])
    assert result.synapse_names == ref.synapse_names and np.array_equal(result.n_synops_per_step, ref.n_synops_per_step)
    assert result.n_lost_input == ref.n_lost_input and sum(ref.n_lost_input.values()) > 0
    assert np.array_equal(result.accuracy, ref.accuracy) and result.ann_accuracy == ref.ann_accuracy
    lava_net = build(network, IMAGES, steps, batch_size=batch_size)  # without log files: the counters are Vars
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    try:  # both images: two samples of one image, or one of two
        lava_net.input.run(condition=RunSteps(num_steps=2 // batch_size * steps),
                           run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        n_spikes = {name: lava_net.layers[name].n_spikes.get() for name in ref.layer_names}
        n_lost = {name: proc.n_lost_input.get() for name, proc in lava_net.layers.items()}
    finally:
        lava_net.stop()
    for name, counts in n_spikes.items():  # per neuron, with a leading image axis in a batch
        assert counts.shape == (*(() if batch_size == 1 else (2,)), *network[name].shape)
        assert np.array_equal(counts.reshape(-1, *network[name].shape).sum(0), ref.n_spikes_per_neuron[name]), name
    assert all(counts.shape == (batch_size,) for counts in n_lost.values())
    assert {name: int(counts.sum()) for name, counts in n_lost.items()} == ref.n_lost_input


def test_event_count_probe_counts_what_a_layer_sends(tmp_path):
    network, steps = tiny_network(), 9
    ref = simulate(network, IMAGES[:1], steps=steps, method="step", record=True)
    lava_net = build(network, IMAGES[:1], steps)
    log = tmp_path / "counts.npy"
    np.lib.format.open_memmap(log, mode="w+", dtype=np.int64, shape=(steps,))
    lava_net.layers["c"].s_out.connect(EventCount(shape=(2, 3, 3), steps_per_sample=steps,
                                                  log_paths={"counts": str(log)}).s_in)
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    try:
        lava_net.input.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
    finally:
        lava_net.stop()
    expected = (ref.extras["spikes"]["c"][:, 0] != 0).reshape(steps, -1).sum(axis=1)
    # a layer sends each step's spikes at the start of the next step (nothing on a sample's first step)
    assert expected.sum() > 0 and np.array_equal(np.load(log), np.concatenate([[0], expected[:-1]]))
    with pytest.raises(ValueError, match="missing \\['counts'\\]"):
        EventCount(shape=(2,), steps_per_sample=3, log_paths={})


def test_wide_weights_multiply_in_int64_and_stay_exact():
    """|weight| row sum 8 * 2**21 times a pixel of 255 exceeds float32's exact integers (2**24): the conv
    multiplies in int64."""
    network = tiny_network(weight_exp=21).replace(provenance={"quantization": {"state_bits": 40}})
    ref = simulate(network, IMAGES, steps=7, method="step", record=True)
    result = run_lava(network, IMAGES, steps=7, record=True, progress=False)
    assert ref.n_spikes_per_step.sum() > 0
    for name, spikes in ref.extras["spikes"].items():
        assert np.array_equal(result.extras["spikes"][name], spikes), name
    assert np.array_equal(result.extras["readout_v"], ref.extras["readout_v"])


def test_compile_error_message_names_the_layer():
    lava_net = build(tiny_network(), IMAGES, 4)
    err = lava_run._compile_error(lava_net, AssertionError("No ProcessModels found for Process d::GatedIF."))
    assert str(err).startswith("Lava could not compile or start layer 'd':")
    assert "the network" in str(lava_run._compile_error(lava_net, AssertionError("something else")))
