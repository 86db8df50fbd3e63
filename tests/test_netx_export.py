"""netx HDF5 export: exact round trips (files, IR, simulation), atomic writes, stock lava-dl loading."""
import json
import os
import string
import tempfile

import h5py
import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import netx_export
from bsnn_lava import zoo
from bsnn_lava.cli_netx import cmd_inspect
from bsnn_lava.conversion import convert
from bsnn_lava.ir import LAYER_TYPES, SYNAPSE_TYPES, Dense, GatedIF, Input, Network, Readout, Schedule, Synapse, replace
from bsnn_lava.quantize import quantize
from bsnn_lava.sim import simulate
from conftest import OptionAResNet, SmallVGG, TVStyleResNet, randomize_batchnorm
from netx_export import NetxExportError, NetxFormatError, UnknownTypeError

#: Limits recorded the way bsnn_lava.quantize records them (netx_export.limits enforces them).
QUANTIZATION = {"weight_mantissa_bits": 8, "weight_exp_max": 7, "bias_mantissa_bits": 13, "bias_exp_max": 7,
                "state_bits": 24}


# --- helpers (also used by test_netx_malformed.py) --------------------------------------------------

def integerized(network: Network, weight_max: int = 127, bias_max: float = np.inf) -> Network:
    """Integer stand-in quantization: per layer, weights scaled to |w| <= weight_max and rounded;
    biases clipped to +-bias_max."""
    layers = [network.input]
    for layer in network.layers[1:]:
        scale = weight_max / max(float(np.abs(s.op.weight).max()) for s in layer.synapses)
        synapses = tuple(Synapse(s.source, replace(s.op, weight=np.round(s.op.weight * scale))) for s in layer.synapses)
        changes = dict(synapses=synapses, bias=np.clip(np.round(layer.bias * scale), -bias_max, bias_max), scale=scale)
        if isinstance(layer, GatedIF):
            threshold = np.maximum(np.round(layer.threshold * scale), 1)
            changes.update(threshold=threshold, v_init=np.floor(threshold / 2))
        layers.append(replace(layer, **changes))
    provenance = dict(network.provenance, quantization=dict(QUANTIZATION))
    return network.replace(layers=tuple(layers), numeric="int", provenance=provenance)


def datasets(path):
    """Every dataset of an HDF5 file: name -> (dtype, shape, raw bytes)."""
    found = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            data = np.asarray(obj[()])
            found[name] = (data.dtype.str, data.shape, data.tobytes())

    with h5py.File(path, "r") as h5:
        h5.visititems(visit)
    return found


def _same_array(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_networks_equal(a: Network, b: Network):
    """Same layers (kind, name, shape, schedule, role, scale, origin, frame reset), bit-equal arrays, provenance."""
    assert a.numeric == b.numeric and a.provenance == b.provenance
    assert len(a.layers) == len(b.layers)
    for x, y in zip(a.layers, b.layers):
        assert (type(x), x.name, x.shape, x.schedule) == (type(y), y.name, y.shape, y.schedule)
        for field in ("role", "scale", "origin", "frame_reset"):
            assert getattr(x, field, None) == getattr(y, field, None), (x.name, field)
        for field in ("threshold", "bias", "v_init"):
            if hasattr(x, field):
                assert _same_array(getattr(x, field), getattr(y, field)), (x.name, field)
        assert len(x.synapses) == len(y.synapses)
        for s, t in zip(x.synapses, y.synapses):
            assert (s.source, type(s.op), s.op.weight_exp) == (t.source, type(t.op), t.op.weight_exp)
            assert _same_array(s.op.weight, t.op.weight), (x.name, s.source)
            assert getattr(s.op, "stride", None) == getattr(t.op, "stride", None)
            assert getattr(s.op, "padding", None) == getattr(t.op, "padding", None)


def round_trip(network: Network, folder):
    """write -> read -> write; checks both files hold identical datasets; returns the read network."""
    first, second = os.path.join(folder, "a.h5"), os.path.join(folder, "b.h5")
    netx_export.write(network, first)
    again = netx_export.read(first)
    netx_export.write(again, second)
    assert datasets(first) == datasets(second)
    assert_networks_equal(network, again)
    return again


def _sequential(channels=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 10)).eval()


# --- round trips of converted networks --------------------------------------------------------------

@pytest.mark.parametrize("model_cls", [OptionAResNet, SmallVGG, TVStyleResNet])
@pytest.mark.parametrize("neuron", ["bistable", "if"])
def test_converted_networks_round_trip_exactly(model_cls, neuron, images, tmp_path):
    x, y = images
    network = convert(randomize_batchnorm(model_cls()), x, neuron=neuron, window=2, mean=(0.4,), std=(0.3,))
    again = round_trip(network, tmp_path)
    steps = network.readout.schedule.offset_steps + 8
    before = simulate(network, x[:6], y[:6], steps=steps)
    after = simulate(again, x[:6], y[:6], steps=steps)
    assert before.n_spikes_per_step.sum() > 0
    np.testing.assert_array_equal(before.n_spikes_per_step, after.n_spikes_per_step)
    np.testing.assert_array_equal(before.accuracy, after.accuracy)


def test_zoo_resnet20_round_trips_exactly(tmp_path):
    x = np.random.default_rng(3).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    y = np.arange(4)
    network = convert(randomize_batchnorm(zoo.cifar_resnet(20)), x, neuron="bistable", window=1,
                      mean=zoo.CIFAR_RESNET_MEAN, std=zoo.CIFAR_RESNET_STD)
    again = round_trip(network, tmp_path)
    steps = network.readout.schedule.offset_steps + 4
    before, after = simulate(network, x[:2], y[:2], steps=steps), simulate(again, x[:2], y[:2], steps=steps)
    assert before.n_spikes_per_step.sum() > 0
    np.testing.assert_array_equal(before.n_spikes_per_step, after.n_spikes_per_step)
    np.testing.assert_array_equal(before.accuracy, after.accuracy)


def test_integer_network_round_trips_with_float32_weights(images, tmp_path):
    x, y = images
    network = integerized(convert(randomize_batchnorm(OptionAResNet()), x, neuron="bistable", window=2))
    again = round_trip(network, tmp_path)
    with h5py.File(tmp_path / "a.h5", "r") as h5:
        assert h5["layer/1/weight"].dtype == np.float32
        assert h5["layer/4/synapse/1/weight"].dtype == np.float32
        assert json.loads(h5["provenance"][0])["quantization"] == QUANTIZATION
    steps = network.readout.schedule.offset_steps + 8
    before, after = simulate(network, x[:6], y[:6], steps=steps), simulate(again, x[:6], y[:6], steps=steps)
    assert before.n_spikes_per_step.sum() > 0
    np.testing.assert_array_equal(before.n_spikes_per_step, after.n_spikes_per_step)
    np.testing.assert_array_equal(before.accuracy, after.accuracy)


@pytest.mark.parametrize("model_cls", [OptionAResNet, TVStyleResNet])
def test_quantized_networks_round_trip_exactly(model_cls, images, tmp_path):
    x, y = images
    network = quantize(convert(randomize_batchnorm(model_cls()), x, neuron="bistable", window=2), "loihi2")
    assert any(s.op.weight_exp for layer in network.layers for s in layer.synapses)
    again = round_trip(network, tmp_path)
    steps = network.readout.schedule.offset_steps + 8
    before, after = simulate(network, x[:6], y[:6], steps=steps), simulate(again, x[:6], y[:6], steps=steps)
    assert before.n_spikes_per_step.sum() > 0
    np.testing.assert_array_equal(before.n_spikes_per_step, after.n_spikes_per_step)
    np.testing.assert_array_equal(before.accuracy, after.accuracy)


def test_netx_fields_of_the_first_synapse(images, tmp_path):
    x, _ = images
    network = convert(randomize_batchnorm(OptionAResNet()), x, neuron="bistable")
    netx_export.write(network, tmp_path / "n.h5")
    with h5py.File(tmp_path / "n.h5", "r") as h5:
        assert h5["layer/0/type"].dtype == np.dtype("S10") and h5["layer/0/type"][0] == b"input"
        conv = h5["layer/1"]
        assert conv["type"][0] == b"conv" and tuple(conv["shape"][()]) == network.layers[1].shape
        assert conv["weight"].shape == network.layers[1].synapses[0].op.weight.shape
        assert tuple(conv["dilation"][()]) == (1, 1) and conv["groups"][()] == 1
        assert conv["neuron/type"][0] == b"BSNN_GIF"
        assert h5["layer/8/type"][0] == b"dense" and h5["layer/8/neuron/type"][0] == b"BSNN_READOUT"
        residual = next(i for i, layer in enumerate(network.layers) if len(layer.synapses) == 2)
        names = [layer.name for layer in network.layers]
        assert list(h5[f"layer/{residual}/inputs"][()]) == [names.index(s.source)
                                                             for s in network.layers[residual].synapses]
        assert h5["format_version"][()] == netx_export.FORMAT_VERSION


# --- hypothesis: random layer graphs ----------------------------------------------------------------

_NAMES = st.text(string.ascii_letters + string.digits + "_.", min_size=1, max_size=12)
_FLOATS = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def random_networks(draw):
    numeric = draw(st.sampled_from(["float", "int"]))
    values = st.integers(-100, 100).map(float) if numeric == "int" else _FLOATS
    positive = st.integers(1, 1000).map(float) if numeric == "int" else st.floats(1e-3, 1e3)
    names = draw(st.lists(_NAMES, min_size=2 + draw(st.integers(0, 5)), max_size=8, unique=True))
    schedule = st.builds(Schedule, st.sampled_from(["bistable", "if", "warmup"]), st.integers(-5, 50),
                         st.integers(1, 5))

    def array(shape):
        return draw(hnp.arrays(np.float64, shape, elements=values))

    def param(channels, elements, per_neuron=None):
        shapes = [(), (channels,)] + ([per_neuron] if per_neuron else [])
        return draw(hnp.arrays(np.float64, draw(st.sampled_from(shapes)), elements=elements))

    layers = [Input(names[0], draw(st.tuples(*[st.integers(1, 3)] * 3)), draw(schedule))]
    for position, name in enumerate(names[1:], start=1):
        size = draw(st.integers(1, 5))
        sources = draw(st.lists(st.sampled_from(layers), min_size=1, max_size=3))
        synapses = tuple(Synapse(s.name, Dense(array((size, int(np.prod(s.shape)))),
                                               weight_exp=draw(st.integers(-3, 3)) if numeric == "int" else 0))
                         for s in sources)
        common = dict(bias=param(size, values), schedule=draw(schedule), scale=draw(positive),
                      origin=draw(st.text(max_size=10).filter(lambda t: "\0" not in t)))
        if position == len(names) - 1:
            layers.append(Readout(name, (size,), synapses, **common))
        else:
            layers.append(GatedIF(name, (size,), synapses, threshold=param(size, positive),
                                  v_init=param(size, values), role=draw(st.sampled_from(["neuron", "relay"])),
                                  frame_reset=common["schedule"].mode == "bistable" and draw(st.booleans()),
                                  **common))
    provenance = draw(st.dictionaries(st.text(max_size=8), st.one_of(st.integers(-10, 10), st.text(max_size=8),
                                                                     st.lists(st.booleans(), max_size=3)),
                                      max_size=4))
    return Network(tuple(layers), numeric=numeric, provenance=provenance)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(random_networks())
def test_random_graphs_round_trip_exactly(network):
    with tempfile.TemporaryDirectory() as folder:
        round_trip(network, folder)


# --- the writer's refusals and atomicity ------------------------------------------------------------

def tiny_int_network(weight=1.0):
    x = Input("x", (1, 2, 2), Schedule("if", 0, 1))
    hidden = GatedIF("h", (3,), (Synapse("x", Dense(np.full((3, 4), 1.0))),), threshold=4.0, bias=0.0, v_init=0.0,
                     schedule=Schedule("if", 1, 1))
    out = Readout("out", (2,), (Synapse("h", Dense(np.full((2, 3), weight))),), bias=0.0,
                  schedule=Schedule("if", 2, 1))
    return Network((x, hidden, out), numeric="int")


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    bad = tiny_int_network(weight=2.0 ** 25)  # beyond float32's exact integers: fails at the last layer
    target = tmp_path / "net.h5"
    with pytest.raises(NetxExportError, match=r"layer 2 \('out'\), field 'weight': .*2\*\*24"):
        netx_export.write(bad, target)
    assert os.listdir(tmp_path) == []
    netx_export.write(tiny_int_network(), target)
    old = target.read_bytes()
    with pytest.raises(NetxExportError):
        netx_export.write(bad, target)
    assert target.read_bytes() == old and os.listdir(tmp_path) == ["net.h5"]


def test_writer_enforces_recorded_limits_and_json_provenance(tmp_path):
    limited = tiny_int_network(weight=9.0).replace(provenance={"quantization": {"weight_mantissa_bits": 4}})
    with pytest.raises(NetxExportError, match=r"layer 2 \('out'\), field 'weight': .*4-bit"):
        netx_export.write(limited, tmp_path / "a.h5")
    with pytest.raises(NetxExportError, match="field 'provenance'"):
        netx_export.write(tiny_int_network().replace(provenance={"x": float("nan")}), tmp_path / "a.h5")
    with pytest.raises(ValueError, match="mode must be"):
        netx_export.write(tiny_int_network(), tmp_path / "a.h5", mode="onnx")
    nul_name = tiny_int_network().with_layers([replace(layer, name="o\0ut") if layer.name == "out" else layer
                                                for layer in tiny_int_network().layers])
    with pytest.raises(NetxExportError, match=r"layer 2 .*NUL"):
        netx_export.write(nul_name, tmp_path / "a.h5")
    assert os.listdir(tmp_path) == []


def test_registry_matches_the_ir_and_names_known_types():
    assert set(netx_export.LAYER_CODECS) == set(LAYER_TYPES)
    assert set(netx_export.SYNAPSE_CODECS) == set(SYNAPSE_TYPES)
    from netx_export.schema import layer_codec
    with pytest.raises(UnknownTypeError, match="'pool'.*gated_if, input, readout"):
        layer_codec("pool")


# --- inspect ----------------------------------------------------------------------------------------

class _Args:
    def __init__(self, file, as_json=False):
        self.file, self.json = str(file), as_json


def test_inspect_prints_table_and_provenance(images, tmp_path, capsys):
    x, _ = images
    network = convert(randomize_batchnorm(OptionAResNet()), x, neuron="bistable")
    netx_export.write(network, tmp_path / "n.h5")
    assert cmd_inspect(_Args(tmp_path / "n.h5")) == 0
    out = capsys.readouterr().out
    assert all(layer.name in out for layer in network.layers) and "BSNN_GIF/relay" in out
    assert "source_model_sha256" in out
    assert cmd_inspect(_Args(tmp_path / "n.h5", as_json=True)) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in report["layers"]] == [layer.name for layer in network.layers]
    assert report["layers"][4]["inputs"] == [s.source for s in network.layers[4].synapses]
    assert report["provenance"] == network.provenance


# --- stock netx ---------------------------------------------------------------------------------------

def test_netx_mode_refuses_what_stock_netx_cannot_express(images, tmp_path):
    x, _ = images
    residual = integerized(convert(randomize_batchnorm(OptionAResNet()), x, neuron="if"))
    with pytest.raises(NetxExportError, match=r"layer \d+ \('relu_2'\), field 'inputs'.*residual"):
        netx_export.write(residual, tmp_path / "r.h5", mode="netx")
    bistable = integerized(convert(_sequential(), x[:, :8, :8], neuron="bistable"))
    with pytest.raises(NetxExportError, match=r"field 'neuron/mode': is 'bistable'"):
        netx_export.write(bistable, tmp_path / "b.h5", mode="netx")
    with pytest.raises(NetxExportError, match="quantize"):
        netx_export.write(convert(_sequential(), x[:, :8, :8], neuron="if"), tmp_path / "f.h5", mode="netx")
    assert os.listdir(tmp_path) == []


@pytest.mark.timeout(300)
def test_netx_mode_loads_and_runs_in_stock_lava_dl(images, tmp_path):
    x, _ = images
    pixels = x[:4, :8, :8]
    network = integerized(convert(_sequential(), pixels, neuron="if", mean=(0.5,), std=(0.25,)), bias_max=4095)
    path = netx_export.write(network, tmp_path / "seq.h5", mode="netx")
    with h5py.File(path, "r") as h5:
        assert [h5[f"layer/{i}/type"][0] for i in range(5)] == [b"input", b"conv", b"conv", b"flatten", b"dense"]
        assert h5["layer/1/neuron/type"][0] == b"CUBA" and h5["layer/1/neuron/iDecay"][()] == 4096
    from bsnn_lava.lava.compat import ensure_netx_importable
    ensure_netx_importable()
    from lava.lib.dl import netx
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    steps = 5
    net = netx.hdf5.Network(net_config=str(path), input_message_bits=8)
    assert len(net.layers) == 3 and net.inp.shape == (8, 8, 3) and net.out.shape == (10,)
    frames = np.repeat(pixels[0].transpose(1, 0, 2)[..., None].astype(np.int32), steps, axis=-1)  # (W, H, C, T)
    source, sink = Source(data=frames), Sink(shape=net.out.shape, buffer=steps)
    source.s_out.connect(net.inp)
    net.out.connect(sink.a_in)
    try:
        net.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        readout_v = net.layers[-1].neuron.v.get()
        assert sink.data.get().shape == (10, steps)
    finally:
        net.stop()
    assert np.abs(readout_v).sum() > 0  # activity crossed every layer within 5 steps


def test_frame_reset_round_trips_and_version_1_files_still_read(images, tmp_path):
    images, _ = images
    net = convert(randomize_batchnorm(OptionAResNet()), images, window=2, frame_reset=True, frames=3)
    assert all(layer.frame_reset for layer in net.spiking_layers)
    again = round_trip(net, tmp_path)
    assert again.frame_reset and all(layer.schedule.frames == 3 for layer in again.layers)
    # a version-1 file (written before frame reset and graded spikes existed) reads as a network without them
    plain = convert(randomize_batchnorm(OptionAResNet()), images, window=2)
    path = tmp_path / "v1.h5"
    netx_export.write(plain, path)
    with h5py.File(path, "r+") as h5:
        for key in h5["layer"]:
            for field in ("frame_reset", "frames", "payload_max"):
                if field in h5["layer"][key]["neuron"]:
                    del h5["layer"][key]["neuron"][field]
        del h5["format_version"]
        h5.create_dataset("format_version", data=np.int64(1))
        del h5[netx_export.h5io.DIGEST_FIELD]
        netx_export.h5io.put_str(h5, netx_export.h5io.DIGEST_FIELD, netx_export.h5io.content_digest(h5))
    old = netx_export.read(path)
    assert not old.frame_reset and all(layer.schedule.frames is None for layer in old.layers)
    assert_networks_equal(plain, old)
