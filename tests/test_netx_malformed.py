"""Malformed bsnn-netx files: every corruption gives one clear NetxFormatError line (CLI: exit 2)."""
import json
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

import netx_export
from bsnn_lava.cli_netx import cmd_inspect
from bsnn_lava.conversion import convert
from bsnn_lava.quantize import quantize
from conftest import OptionAResNet, randomize_batchnorm
from netx_export import NetxFormatError
from test_netx_export import tiny_int_network, assert_networks_equal

# Layers of the quantized OptionAResNet below: 0 x (input), 1 relu (conv), 2 relu_1, 3 relay,
# 4 relu_2 (two synapses: a residual add), 5 relu_3, 6 relay, 7 relu_4 (two synapses), 8 readout.


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """(path of a valid integer-network file quantized for loihi2, the network it holds)."""
    x = np.random.default_rng(0).integers(0, 256, size=(8, 16, 16, 3), dtype=np.uint8)
    network = quantize(convert(randomize_batchnorm(OptionAResNet()), x, neuron="bistable", window=2), "loihi2")
    path = tmp_path_factory.mktemp("good") / "good.h5"
    netx_export.write(network, path)
    return path, network


def _text(value: str):
    return np.array([value.encode()], dtype="S10")


def _put(name, data):
    """An edit that replaces (or creates) dataset ``name`` with ``data``."""
    def edit(h5):
        if name in h5:
            del h5[name]
        h5.create_dataset(name, data=data)
    return edit


def _delete(name):
    def edit(h5):
        del h5[name]
    return edit


def _change(name, change):
    """An edit that rewrites dataset ``name`` with ``change(values)``."""
    def edit(h5):
        values = h5[name][()]
        del h5[name]
        h5.create_dataset(name, data=np.asarray(change(values.copy())))
    return edit


def _set_first(value):
    def change(values):
        values.flat[0] = value
        return values
    return change


def _provenance(change):
    def edit(h5):
        provenance = json.loads(h5["provenance"][0])
        change(provenance)
        _put("provenance", np.array([json.dumps(provenance).encode()]))(h5)
    return edit


L1, L2, L4, L8 = (r"layer 1 \('relu'\)", r"layer 2 \('relu_1'\)", r"layer 4 \('relu_2'\)", r"layer 8 \('readout'\)")

#: name -> (edit of a good file with h5py, regex the one-line message must match)
CORRUPTIONS = {
    "missing weight": (_delete("layer/1/weight"), L1 + r", field 'weight': missing"),
    "missing threshold": (_delete("layer/2/neuron/threshold"), L2 + r", field 'neuron/threshold': missing"),
    "missing neuron group": (_delete("layer/3/neuron"), r"layer 3 .*field 'neuron': missing group"),
    "missing layer group": (_delete("layer"), r"field 'layer': missing group"),
    "gap in layer numbering": (_delete("layer/5"), r"field 'layer': needs subgroups '0'..'n-1'"),
    "missing provenance": (_delete("provenance"), r"field 'provenance': missing"),
    "missing name": (_delete("layer/2/name"), r"layer 2 \(name unreadable\), field 'name': missing"),
    "weight int32": (_change("layer/1/weight", lambda w: w.astype(np.int32)), L1 + r", field 'weight': has dtype int32"),
    "weight float64 in int network": (_change("layer/8/weight", lambda w: w.astype(np.float64)),
                                      L8 + r", field 'weight': has dtype float64, expected float32"),
    "shape as float": (_change("layer/1/shape", lambda s: s.astype(np.float64)), L1 + r", field 'shape': has dtype"),
    "type not a string": (_put("layer/1/type", np.int64(3)), L1 + r", field 'type': has dtype int64"),
    "type with two entries": (_put("layer/1/type", np.array([b"conv", b"conv"])), L1 + r", field 'type': has shape"),
    "weight is a group": (lambda h5: (_delete("layer/1/weight")(h5), h5.create_group("layer/1/weight")),
                          L1 + r", field 'weight': is a group"),
    "transposed dense weight": (_change("layer/8/weight", lambda w: w.T), L8 + r", field 'weight': has shape"),
    "threshold wrong shape": (_put("layer/2/neuron/threshold", np.ones(9)), L2 + r", field 'neuron/threshold': has shape"),
    "layer shape inconsistent": (_put("layer/2/shape", np.array([8, 16, 15])), L2 + r", field 'weight': gives shape"),
    "non-integer weight": (_change("layer/1/weight", _set_first(2.5)), L1 + r", field 'weight': is not integer-valued"),
    "weight beyond recorded profile": (_change("layer/1/weight", _set_first(200)),
                                       L1 + r", field 'weight': .*8-bit mantissa range \[-128, 127\]"),
    "weight_exp beyond profile": (_put("layer/1/weight_exp", np.int64(12)), L1 + r", field 'weight'.*recorded maximum 7"),
    "bias beyond recorded profile": (_change("layer/2/neuron/bias", _set_first(2.0 ** 20)),
                                     L2 + r", field 'neuron/bias': .*recorded bias mantissa and exponent range"),
    "threshold beyond state": (_change("layer/2/neuron/threshold", lambda t: t * 2 ** 10),
                               L2 + r", field 'neuron/threshold': .*24-bit state range"),
    "NaN weight": (_change("layer/1/weight", _set_first(np.nan)), L1 + r", field 'weight': has NaN"),
    "infinite bias": (_change("layer/2/neuron/bias", _set_first(np.inf)), L2 + r", field 'neuron/bias': has NaN or inf"),
    "negative threshold": (_change("layer/2/neuron/threshold", lambda t: -t), L2 + r", field 'neuron/threshold': must be > 0"),
    "non-integer bias": (_change("layer/2/neuron/bias", _set_first(0.5)), L2 + r", field 'neuron/bias': is not integer"),
    "non-finite scale": (_put("layer/2/neuron/scale", np.float64(np.nan)), L2 + r", field 'neuron/scale': is nan"),
    "unknown neuron type": (_put("layer/2/neuron/type", _text("LIF_X")),
                            L2 + r", field 'neuron/type': unknown neuron type 'LIF_X' \(known: BSNN_GIF, BSNN_INPUT"),
    "unknown synapse type": (_put("layer/1/type", _text("pool")), L1 + r", field 'type': unknown synapse type 'pool'"),
    "unknown extra synapse type": (_put("layer/4/synapse/1/type", _text("concat")),
                                   L4 + r", field 'synapse/1/type': unknown synapse type 'concat'"),
    "unknown mode": (_put("layer/2/neuron/mode", _text("burst")), L2 + r", field 'neuron/mode': unknown mode 'burst'"),
    "unknown role": (_put("layer/2/neuron/role", _text("boss")), L2 + r", field 'neuron/role': unknown role 'boss'"),
    "zero window": (_put("layer/2/neuron/window_steps", np.int64(0)), L2 + r", field 'neuron/window_steps': must be >= 1"),
    "readout not last": (_put("layer/8/neuron/type", _text("BSNN_GIF")), L8 + r", field 'neuron/type': .*at position 8"),
    "dangling input": (_put("layer/2/inputs", np.array([99])), L2 + r", field 'inputs': entry 0 refers to layer 99"),
    "forward reference (cycle)": (_put("layer/4/inputs", np.array([2, 6])),
                                  L4 + r", field 'inputs': entry 1 refers to layer 6, which is not an earlier layer"),
    "self reference": (_put("layer/3/inputs", np.array([3])), r"layer 3 .*field 'inputs': entry 0 refers to layer 3"),
    "negative input index": (_put("layer/3/inputs", np.array([-1])), r"layer 3 .*field 'inputs': entry 0"),
    "input layer with inputs": (_put("layer/0/inputs", np.array([0])), r"layer 0 \('x'\), field 'inputs'"),
    "stray synapse group": (lambda h5: h5.create_group("layer/1/synapse/1"), L1 + r", field 'synapse': has subgroups"),
    "missing synapse group": (_delete("layer/4/synapse"), L4 + r", field 'synapse': missing group"),
    "duplicate names": (_put("layer/2/name", _text("relu")), r"layer 2 \('relu'\), field 'name': duplicate"),
    "name not UTF-8": (_put("layer/2/name", np.array([b"\xff\xfe"])), r"layer 2 .*field 'name': is not UTF-8"),
    "dilation 0": (_put("layer/1/dilation", np.array([0, 1])), L1 + r", field 'dilation': is \(0, 1\); expected two integers >= 1"),
    "groups not dividing the channels": (_put("layer/1/groups", np.int64(5)), L1 + r", field 'groups': is 5; expected a positive integer dividing"),
    "groups with a full weight": (_put("layer/2/groups", np.int64(2)), L2 + r", field 'weight': has shape .*, expected \(\d+, \d+, kH, kW\)"),
    "zero stride": (_put("layer/1/stride", np.array([0, 1])), L1 + r", field 'stride'"),
    "bad format version": (_put("format_version", np.int64(6)), r"field 'format_version': is 6; this reader knows versions 1, 2, 3, 4, 5"),
    "frame_reset not 0 or 1": (_put("layer/2/neuron/frame_reset", np.int64(2)),
                               L2 + r", field 'neuron/frame_reset': is 2, expected 0 or 1"),
    "frame_reset missing": (_delete("layer/2/neuron/frame_reset"), L2 + r", field 'neuron/frame_reset': missing"),
    "frame_reset on an IF layer": (lambda h5: (_put("layer/2/neuron/frame_reset", np.int64(1))(h5),
                                               _put("layer/2/neuron/mode", _text("if"))(h5)),
                                   L2 + r", field 'neuron/frame_reset': is 1, which needs a bistable schedule"),
    "missing format version": (_delete("format_version"), r"field 'format_version': missing: not a bsnn-netx file"),
    "format version as text": (_put("format_version", _text("1")), r"field 'format_version': has dtype"),
    "unknown numeric": (_put("numeric", _text("complex")), r"field 'numeric': is 'complex'"),
    "bad JSON provenance": (_put("provenance", np.array([b"{not json"])), r"field 'provenance': is not valid JSON"),
    "provenance not an object": (_put("provenance", np.array([b"[1, 2]"])), r"field 'provenance': must be a JSON object"),
    "NaN in provenance": (_put("provenance", np.array([b'{"a": NaN}'])), r"field 'provenance': .*NaN"),
    "bad quantization record": (_provenance(lambda p: p["quantization"].update(weight_mantissa_bits="eight")),
                                r"field 'provenance': .*weight_mantissa_bits must be an integer"),
    "tampered value within range": (_change("layer/1/weight", lambda w: w + (w == 0)),
                                    r"field 'content_sha256': does not match the file's contents"),
    "missing digest": (_delete("content_sha256"), r"field 'content_sha256': missing"),
}


def _corrupt(good, tmp_path, edit):
    path = tmp_path / "bad.h5"
    shutil.copy(good[0], path)
    with h5py.File(path, "r+") as h5:
        edit(h5)
    return path


def _assert_one_clear_line(path, pattern=None):
    with pytest.raises(NetxFormatError) as info:
        netx_export.read(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    if pattern is not None:
        assert re.search(pattern, message), message
    return message


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruption_gives_one_clear_line(name, good, tmp_path, capsys):
    edit, pattern = CORRUPTIONS[name]
    path = _corrupt(good, tmp_path, edit)
    _assert_one_clear_line(path, pattern)
    assert cmd_inspect(type("Args", (), {"file": str(path), "json": False})) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_the_good_file_reads_back(good):
    assert_networks_equal(netx_export.read(good[0]), good[1])


def _truncated(size):
    def make(good_path, path):
        path.write_bytes(good_path.read_bytes()[:size(len(good_path.read_bytes()))])
    return make


FILE_CASES = {
    "truncated to half": (_truncated(lambda n: n // 2), r"(not a readable HDF5 file|damaged|unreadable)"),
    "truncated by one byte": (_truncated(lambda n: n - 1), r"(not a readable HDF5 file|damaged|unreadable)"),
    "truncated to the superblock": (_truncated(lambda n: 48), r"not a readable HDF5 file"),
    "empty file": (lambda good_path, path: path.write_bytes(b""), r"not a readable HDF5 file"),
    "not an HDF5 file": (lambda good_path, path: path.write_text("layer,0,conv\n"), r"not a readable HDF5 file"),
    "a directory": (lambda good_path, path: path.mkdir(), r"is a directory"),
    "missing file": (lambda good_path, path: None, r"no such file"),
    "a stock netx file": (lambda good_path, path: netx_export.write(tiny_int_network(), path, mode="netx"),
                          r"field 'format_version': missing: not a bsnn-netx file"),
}


@pytest.mark.parametrize("name", sorted(FILE_CASES))
def test_damaged_or_absent_files_give_one_clear_line(name, good, tmp_path):
    make, pattern = FILE_CASES[name]
    path = tmp_path / "net.h5"
    make(good[0], path)
    _assert_one_clear_line(path, pattern)


@pytest.mark.parametrize("seed", range(8))
def test_random_byte_flips_are_caught_or_harmless(seed, good, tmp_path):
    """Flipped bytes either raise NetxFormatError or (in unused bytes) leave the network unchanged:
    never another exception, never a silently different network."""
    rng = np.random.default_rng(seed)
    data = bytearray(good[0].read_bytes())
    for position in rng.integers(0, len(data), size=1 + seed % 4):
        data[position] ^= int(rng.integers(1, 256))
    path = tmp_path / "flipped.h5"
    path.write_bytes(bytes(data))
    try:
        network = netx_export.read(path)
    except NetxFormatError as err:
        assert "\n" not in str(err) and str(err).startswith(str(path))
    else:
        assert_networks_equal(network, good[1])


def test_most_random_byte_flips_are_detected(good, tmp_path):
    rng = np.random.default_rng(100)
    original = good[0].read_bytes()
    caught = 0
    for trial in range(40):
        data = bytearray(original)
        data[int(rng.integers(0, len(data)))] ^= 0xFF
        path = tmp_path / f"flip{trial}.h5"
        path.write_bytes(bytes(data))
        try:
            assert_networks_equal(netx_export.read(path), good[1])
        except NetxFormatError:
            caught += 1
    assert caught >= 30  # the rest hit bytes HDF5 never reads


@pytest.mark.parametrize("name", ["truncated to half", "not an HDF5 file", "a directory"])
def test_cli_exit_code_2_one_line_no_traceback(name, good, tmp_path):
    path = tmp_path / "net.h5"
    FILE_CASES[name][0](good[0], path)
    out = subprocess.run([sys.executable, "-m", "bsnn_lava.cli_netx", "inspect", str(path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("bsnn inspect: error: ")
    assert "Traceback" not in out.stderr


def test_cli_on_a_corrupted_layer_names_it(good, tmp_path):
    path = _corrupt(good, tmp_path, CORRUPTIONS["dangling input"][0])
    out = subprocess.run([sys.executable, "-m", "bsnn_lava.cli_netx", "inspect", str(path), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert re.search(r"layer 2 \('relu_1'\), field 'inputs'", out.stderr)
