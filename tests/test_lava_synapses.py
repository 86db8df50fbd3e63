"""The two forms of a convolution synapse in the Lava CPU models (the sparse matrix and the kernel)
give the same sums, and the memory estimate that decides whether a network is built."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bsnn_lava.ir import Conv2d, Dense, GatedIF, Input, MaxPool, Network, Readout, Schedule, Synapse
from bsnn_lava.lava import build as lava_build
from bsnn_lava.lava.procs import conv_synapse, pooled_synapse
from bsnn_lava.lava.procs import models, process
from bsnn_lava.lava.procs.models import KernelConv, SynapticInput
from test_lava_parity import assert_parity

pytestmark = pytest.mark.timeout(300)

#: (out, in, groups, kernel, input (H, W), stride, padding, dilation)
CONVS = [(4, 4, 1, (3, 3), (7, 7), (1, 1), (1, 1), (1, 1)),
         (6, 4, 2, (3, 3), (8, 8), (2, 2), (1, 1), (1, 1)),
         (8, 8, 8, (3, 3), (9, 9), (1, 1), (2, 2), (2, 2)),  # depthwise, dilated
         (4, 2, 1, (3, 2), (7, 5), (2, 1), (1, 0), (1, 2)),
         (3, 3, 1, (1, 1), (5, 5), (2, 2), (0, 0), (1, 1)),
         (6, 3, 3, (2, 3), (6, 7), (1, 2), (0, 2), (2, 1))]


def spec_pair(weight, in_shape, stride, padding, dilation, groups, weight_exp=0, max_input=1):
    """The same convolution in both forms."""
    return [conv_synapse(weight, in_shape, stride, padding, weight_exp, max_input, dilation, groups, form=form)
            for form in process.CONV_FORMS]


def messages(rng, batch_size, size, fraction, max_input, integer):
    values = rng.integers(1, max_input + 1, (batch_size, size)) * (rng.random((batch_size, size)) < fraction)
    return values.astype(np.int32 if integer else np.float64)


def force_path(monkeypatch, path: str) -> None:
    """Send every step of every convolution down one path, also in Lava's forked workers: ``"matrix"``
    (where the form has one, else the cheapest), ``"scatter"`` or ``"correlate"``."""
    monkeypatch.setattr(models, "MATRIX_CALL_COST", -np.inf if path == "matrix" else np.inf)
    monkeypatch.setattr(models, "SCATTER_CALL_COST", -1e300 if path == "scatter" else np.inf)


@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("integer, weight_exp, max_input", [(True, 0, 1), (True, 3, 255), (True, 0, 7), (False, 0, 1)])
@pytest.mark.parametrize("path", ["matrix", "scatter", "correlate"])
def test_both_forms_give_the_sums_of_torch_conv2d(monkeypatch, conv, integer, weight_exp, max_input, path):
    """Binary spikes, graded payloads and pixels, batches of 1 and 3, sparse and dense messages, every
    path (matrix columns, the kernel's scatter, the correlation), integer mantissas times 2**weight_exp:
    every form sums exactly torch's conv2d of the messages (in float64, exact here)."""
    force_path(monkeypatch, path)
    out_ch, in_ch, groups, kernel, size, stride, padding, dilation = conv
    rng = np.random.default_rng(sum(conv[:3]) + weight_exp)
    weight = rng.integers(-9, 10, (out_ch, in_ch // groups, *kernel)).astype(float)
    weight[0, 0] = 0
    specs = spec_pair(weight, (in_ch, *size), stride, padding, dilation, groups, weight_exp, max_input)
    for batch_size in (1, 3):
        forms = [SynapticInput([spec], batch_size, integer, "layer") for spec in specs]
        assert forms[0].synapses[0].matrix is not None and forms[1].synapses[0].matrix is None
        for fraction in (0.01, 0.2, 1.0):
            s = messages(rng, batch_size, in_ch * size[0] * size[1], fraction, max_input, integer)
            x = torch.tensor(s.reshape(batch_size, in_ch, *size), dtype=torch.float64)
            expected = F.conv2d(x, torch.tensor(weight * 2.0 ** weight_exp), None, stride, padding, dilation, groups)
            for synapses in forms:
                got = synapses.deliver([s])
                if not s.any():
                    assert got is None
                    continue
                assert got.dtype == (np.int64 if integer else np.float64)
                assert np.array_equal(got, expected.reshape(batch_size, -1).numpy())


@pytest.mark.parametrize("path", ["matrix", "scatter", "correlate"])
def test_real_valued_weights_agree_up_to_rounding(monkeypatch, path):
    """``floating_pt`` with real weights: the forms sum in different orders, so they agree to float64's
    rounding (exact where the weights are integers, above)."""
    force_path(monkeypatch, path)
    rng = np.random.default_rng(4)
    weight = rng.normal(0, 1, (6, 4, 3, 3))
    s = messages(rng, 2, 4 * 9 * 9, 0.1, 1, integer=False)
    expected = F.conv2d(torch.tensor(s.reshape(2, 4, 9, 9)), torch.tensor(weight), None, 2, 1).reshape(2, -1).numpy()
    for spec in spec_pair(weight, (4, 9, 9), (2, 2), (1, 1), (1, 1), 1):
        assert np.allclose(SynapticInput([spec], 2, False, "layer").deliver([s]), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_both_kernel_paths_are_exact_past_float32_and_float64(batch_size):
    """Mantissas whose row sums of |mantissa| times the largest input pass 2**24 (float64 products) and
    2**53 (int64 products): the kernel's scatter and correlation equal the int64 matrix exactly."""
    rng = np.random.default_rng(3)
    for bits, dtype, exceeded in ((22, np.float64, 2 ** 24), (47, np.int64, 2 ** 53)):
        weight = rng.integers(-2 ** bits, 2 ** bits, (3, 2, 3, 3)).astype(float)
        matrix_spec, kernel_spec = spec_pair(weight, (2, 6, 6), (1, 1), (1, 1), (1, 1), 1, 0, 255)
        kernel = KernelConv(kernel_spec, integer=True)
        assert kernel.compute == dtype
        matrix = models.MatrixSynapse(matrix_spec, integer=True, dense_fraction=0.25)
        for fraction in (0.02, 1.0):
            s = messages(rng, batch_size, 72, fraction, 255, True)
            x = s.reshape(batch_size, 2, 6, 6)
            expected = matrix(s)
            assert expected.dtype == np.int64 and (fraction < 1 or np.abs(expected).max() > exceeded)
            assert np.array_equal(kernel.scattered(x).astype(np.int64), expected)
            assert np.array_equal(kernel.correlated(x).astype(np.int64), expected)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_dense_synapse_keeps_small_mantissas_and_is_exact(monkeypatch, batch_size):
    """A dense synapse holds 8-bit mantissas in one byte each, wider ones in the next integer type, and
    sums exactly (integer products past 2**24 and 2**53 too, in chunks of rows smaller than its active
    inputs), times 2**weight_exp; a float network's stays float64."""
    from bsnn_lava.lava.procs import dense_synapse

    monkeypatch.setattr(models, "DENSE_CHUNK_VALUES", 7 * 5)  # chunks of 7 rows of 5 outputs
    rng = np.random.default_rng(4)
    for low, high, storage, compute in ((-128, 128, np.int8, np.float32), (-30000, 30000, np.int16, np.float64),
                                        (-2 ** 47, 2 ** 47, np.int64, np.int64)):
        weight = rng.integers(low, high, (5, 60))
        weight[:, 3] = 0
        synapse = models.DenseSynapse(dense_synapse(weight.astype(float), (60,), weight_exp=2, max_input=255), True)
        assert synapse.by_input.dtype == storage and synapse.by_input.shape == (60, 5) and synapse.compute == compute
        for fraction in (0.0, 0.1, 1.0):
            s = messages(rng, batch_size, 60, fraction, 255, True)
            out = synapse(s)
            if fraction == 0:
                assert out is None
                continue
            expected = [[sum(int(a) * int(w) for a, w in zip(row, column)) * 4 for column in weight] for row in s]
            assert out.dtype == np.int64 and out.tolist() == expected
    real = models.DenseSynapse(dense_synapse(rng.normal(size=(5, 60)), (60,), weight_exp=0), False)
    assert real.by_input.dtype == np.float64


def test_a_sparse_kernel_builds_its_matrix_in_proportion_to_its_nonzero_weights():
    """An identity map of 1024 channels (a relay) at 4x4: 16,384 matrix entries, built without visiting
    the 1024 x 1024 kernel's zeros at every position (that took 2 GiB per relay of ResNet-50)."""
    import tracemalloc

    weight = np.eye(1024)[:, :, None, None] * 3.0
    tracemalloc.start()
    matrix = models.conv_matrix(weight, (1024, 4, 4), (1, 1), (0, 0))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert matrix.nnz == 1024 * 16 and peak < 64 * matrix.nnz  # bytes; visiting every entry: 16.8 M of them
    np.testing.assert_array_equal(matrix.diagonal(), np.full(1024 * 16, 3.0))  # nnz entries: all on the diagonal


def test_both_forms_read_max_pooled_graded_messages():
    """A synapse that max-pools its source's graded payloads first, then convolves (stride 2, padding)."""
    rng = np.random.default_rng(5)
    source_shape, pool = (3, 8, 8), MaxPool((3, 3), (2, 2), (1, 1))
    pooled_shape = pool.output_shape(source_shape)
    weight = rng.integers(-5, 6, (4, 3, 3, 3)).astype(float)
    specs = [pooled_synapse(spec, source_shape, pool.taps(source_shape))
             for spec in spec_pair(weight, pooled_shape, (2, 2), (1, 1), (1, 1), 1, 2, 3)]
    s = messages(rng, 2, 3 * 8 * 8, 0.3, 3, True)
    pooled = F.max_pool2d(torch.tensor(s.reshape(2, *source_shape), dtype=torch.float64), 3, 2, 1)
    expected = F.conv2d(pooled, torch.tensor(weight * 4.0), None, 2, 1).reshape(2, -1).numpy()
    for spec in specs:
        assert np.array_equal(SynapticInput([spec], 2, True, "layer").deliver([s]), expected)


def test_each_step_takes_the_cheapest_path(monkeypatch):
    """Few active inputs of a layer with many output channels scatter, many correlate; in the matrix
    form few take the matrix's columns (the path taken is the one whose result comes back)."""
    rng = np.random.default_rng(2)
    weight = rng.integers(-9, 10, (256, 64, 3, 3)).astype(float)
    taken = []
    for name, cls in (("scattered", KernelConv), ("correlated", KernelConv), ("__call__", models.MatrixSynapse)):
        method = getattr(cls, name)
        monkeypatch.setattr(cls, name, lambda self, *a, m=method, n=name: (taken.append(n), m(self, *a))[1])
    for form, fraction, path in (("kernel", 0.002, "scattered"), ("kernel", 0.3, "correlated"),
                                 ("matrix", 0.002, "__call__"), ("matrix", 0.3, "correlated")):
        conv = KernelConv(conv_synapse(weight, (64, 14, 14), padding=(1, 1), form=form), integer=True)
        conv(messages(rng, 1, 64 * 14 * 14, fraction, 1, True))
        assert taken.pop() == path, (form, fraction)
    small = KernelConv(conv_synapse(np.ones((4, 4, 3, 3)), (4, 8, 8), padding=(1, 1), form="kernel"), True)
    small(messages(rng, 1, 256, 0.01, 1, True) + np.eye(1, 256, dtype=np.int32))
    assert taken.pop() == "correlated"


def test_the_selection_rule_picks_the_kernel_above_the_matrix_limit(monkeypatch):
    weight = np.ones((2, 1, 3, 3))
    assert conv_synapse(weight, (1, 6, 6), padding=(1, 1))["form"] == "matrix"  # 2 x 6 x 6 x 9 - borders
    monkeypatch.setattr(process, "MATRIX_FORM_MAX_WEIGHTS", 100)
    assert conv_synapse(weight, (1, 6, 6), padding=(1, 1))["form"] == "kernel"
    assert conv_synapse(weight, (1, 6, 6), padding=(1, 1), form="matrix")["form"] == "matrix"
    with pytest.raises(ValueError, match="form must be one of matrix, kernel or None, got 'dense'"):
        conv_synapse(weight, (1, 6, 6), form="dense")


def residual_network(payload_max: int = 1) -> Network:
    """An integer network of strided, padded, dilated, grouped and max-pooled convolutions with a residual
    add, bistable windows."""
    rng = np.random.default_rng(7)
    conv = lambda out_ch, in_ch, k, **kw: Conv2d(rng.integers(-20, 21, (out_ch, in_ch // kw.get("groups", 1), k, k))
                                                 .astype(float), **kw)
    x = Input("x", (3, 12, 12), Schedule("bistable", -2, 2))
    a = GatedIF("a", (8, 12, 12), (Synapse("x", conv(8, 3, 3, padding=(1, 1))),), threshold=2000.0, bias=10.0,
                v_init=1000.0, schedule=Schedule("bistable", 1, 2), payload_max=payload_max)
    b = GatedIF("b", (8, 6, 6), (Synapse("a", conv(8, 8, 3, padding=(1, 1), groups=4), MaxPool((2, 2), (2, 2))),),
                threshold=60.0, bias=1.0, v_init=30.0, schedule=Schedule("bistable", 4, 2))
    c = GatedIF("c", (8, 6, 6), (Synapse("b", conv(8, 8, 3, padding=(2, 2), dilation=(2, 2))),
                                 Synapse("a", conv(8, 8, 1, stride=(2, 2)))),
                threshold=50.0, bias=-1.0, v_init=25.0, schedule=Schedule("bistable", 7, 2))
    out = Readout("out", (5,), (Synapse("c", Dense(rng.integers(-5, 6, (5, 288)).astype(float))),), bias=0.0,
                  schedule=Schedule("bistable", 10, 2))
    return Network((x, a, b, c, out), numeric="int")


@pytest.mark.parametrize("form, path, payload_max, batch_size", [
    ("kernel", "scatter", 1, 1), ("kernel", "correlate", 1, 1), ("kernel", "scatter", 3, 2), ("kernel", "correlate", 3, 2),
    ("matrix", "matrix", 3, 1), ("matrix", "correlate", 3, 1), ("matrix", "matrix", 1, 2)])
def test_networks_of_either_form_match_the_reference_spike_for_spike(monkeypatch, form, path, payload_max, batch_size):
    if form == "kernel":
        monkeypatch.setattr(process, "MATRIX_FORM_MAX_WEIGHTS", 0)
    force_path(monkeypatch, path)
    network = residual_network(payload_max)
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 12, 12), dtype=np.uint8)
    built = lava_build.build(network, images[:batch_size], 18, batch_size=batch_size)
    forms = [spec.get("form", "dense") for process_ in built.layers.values()
             for spec in process_.proc_params["synapses"]]
    assert forms == [form] * 4 + ["dense"]
    ref = assert_parity(network, images, np.arange(3), steps=18, batch_size=batch_size)
    assert all(ref.n_spikes[name] > 0 for name in "abc")


def test_memory_estimate_counts_every_process_in_the_form_it_runs(monkeypatch):
    """Per process: the worker, its neurons and each synapse in its form (every convolution its kernel
    and im2col scratch, the matrix form its matrix too); the refusal names the largest process."""
    network, b = residual_network(), lava_build
    matrices = {(layer.name, k): int(s.op.fan_out(s.input_shape(network[s.source].shape)).sum())
                for layer in network.layers[1:] for k, s in enumerate(layer.synapses) if isinstance(s.op, Conv2d)}
    # layer 'c' (8 x 6 x 6): a dilated 3x3 conv of b (8 x 6 x 6) and a strided 1x1 of a (8 x 12 x 12)
    columns = 8 * 9 * 36 + 8 * 1 * 36  # im2col values: in_channels x taps x output positions, per synapse
    padded = 8 * 10 * 10 + 8 * 12 * 12
    kernels = b.KERNEL_BYTES_PER_WEIGHT * (8 * 8 * 9 + 8 * 8)
    for form in process.CONV_FORMS:
        if form == "kernel":
            monkeypatch.setattr(process, "MATRIX_FORM_MAX_WEIGHTS", 0)
        for batch_size in (1, 2):
            per_process, building = lava_build.memory_estimate(network, batch_size=batch_size)
            assert list(per_process) == [layer.name for layer in network.layers]
            expected = (b.WORKER_BYTES + (batch_size * b.NEURON_BYTES + b.PARAMETER_BYTES) * 288
                        + b.RECEIVED_BYTES * batch_size * (288 + 1152) + kernels
                        + b.SCRATCH_BYTES_PER_VALUE * batch_size * (columns + padded + 2 * 3 * 288))
            if form == "matrix":  # these small convolutions keep their matrices too
                expected += (b.MATRIX_BYTES_PER_WEIGHT * (matrices["c", 0] + matrices["c", 1])
                             + b.MATRIX_BYTES_PER_INPUT * (288 + 1152))
                assert building == b.BUILD_BYTES_PER_WEIGHT * sum(matrices.values())  # every worker builds at once
            else:  # no matrix is built
                assert building == 0
            assert per_process["c"] == expected
            # the readout's dense synapse: its 5 x 288 mantissas in int8 and a chunk's scratch
            assert per_process["out"] == (b.WORKER_BYTES + (batch_size * b.NEURON_BYTES + b.PARAMETER_BYTES) * 5
                                          + b.RECEIVED_BYTES * batch_size * 288 + 1440 * (1 + 2 * 8))
    need = lava_build.check_memory(network, available=None, batch_size=2)
    assert need == sum(per_process.values()) + b.RUNTIME_PROCESSES * b.WORKER_BYTES + building
    assert lava_build.check_memory(network, available=need, batch_size=2) == need
    largest = max(per_process, key=per_process.get)
    with pytest.raises(ValueError, match=rf"need about .* GiB for 5 processes of 2 image\(s\) at once \(the largest, "
                                         rf"'{largest}', .*more than the .* GiB available here"):
        lava_build.check_memory(network, available=need - 1, batch_size=2)
