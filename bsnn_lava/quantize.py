"""Float network -> integer network for a hardware profile (Loihi-style fixed point).

Every layer (spiking or readout) gets one integer scale ``s`` (integer units per float unit):
its synapse weights become 8-bit signed mantissas with a per-synapse exponent
(``weight_int = mant * 2**weight_exp``, ``0 <= weight_exp <= exp_max``), its threshold, initial
potential and bias become integers in the same scale (the bias representable as a 13-bit mantissa
with a shared exponent). All synapses into a layer, residual branches included, land in that
layer's scale. A spike is worth one unit of its source's output, so scales never need to agree
across layers.

Choosing ``s`` for a spiking layer: the largest weight gets the full mantissa
(``s = mant_max * 2**E / max|w|``), with the exponent ``E`` as large as the threshold allows:
``threshold <= 2**(state_bits - 1 - headroom_bits - ceil(log2(P + 1)))``, so a full window
(P + 1 thresholds) plus ``2**headroom_bits`` times more (overdriven neurons, residues) fits the
signed state (P: the largest count of a fire window, ``window_steps * payload_max`` for graded
spikes). Where even ``E = 0`` is too large (a stem reading 0..255 pixels), the threshold takes
the cap and the mantissa is smaller. The readout integrates for the whole run, so it keeps
exponent 0 (largest weight = mant_max), and a smaller scale where its bias, added on every
integrate step, would otherwise fill the state within :data:`READOUT_RUN_STEPS` steps.

Rounding each weight to the nearest 8-bit mantissa shifts a neuron's mean input by a fixed amount
per step (about 0.5% of the threshold in ResNet20, which the network integrates for the whole run)
and adds a spread of similar size. Given calibration images, :func:`quantize` reduces both, layer by
layer on the integer network's own activations: the mantissas are rounded with error feedback
(GPTQ, Frantar et al., ICLR 2023), then each neuron's bias absorbs the remaining mean difference
between its integer input and the float input (bias correction, Nagel et al., ICCV 2019, here with
data). On ResNet20 this cuts the RMS input error per layer from 0.6-1.4% to 0.1-0.4% of the
threshold (``bench/resnet20_fixed_point.py``). The choices are recorded in
``provenance["quantization"]``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Optional, Tuple, Union

import numpy as np

from hw_profiles import HardwareProfile, load_profile

from .ir import Conv2d, GatedIF, Network, Readout, Synapse, replace
from .resources import graded_payload_problem

#: Integrate steps the readout's bias alone may run before it could saturate the state.
READOUT_RUN_STEPS = 4096


def quantize(network: Network, profile: Union[str, HardwareProfile] = "loihi2", headroom_bits: int = 6,
             max_exponent: Optional[int] = None, calibration_images=None, progress: bool = False) -> Network:
    """The integer version of a float ``network`` for ``profile`` (a name, path or profile).

    ``max_exponent``: cap the weight and bias exponents below the profile's (0 for stock lava-dl
    netx, whose fixed-point convolution ignores weight exponents). ``calibration_images``: raw uint8
    images (any layout :func:`bsnn_lava.simulate` takes) for error-feedback rounding and bias
    correction (the biases then become per neuron); without them weights are rounded to nearest
    and biases are the rounded float ones. ``progress``: a progress bar over the layers of the
    calibrated rounding (the slow part: about 20 s for ResNet20 on two cores).

    A network fine-tuned on a profile's integers (``finetune(..., hw=...)``, provenance
    :data:`TRAINED_INTEGERS`) is rounded to nearest on that same grid, which gives exactly the
    integers its training used; another profile or ``headroom_bits``, or ``calibration_images``
    (a second rounding), is refused.
    """
    if network.numeric == "int":
        raise ValueError("the network is already quantized")
    hw = integer_grid(profile, max_exponent)
    if not 0 <= headroom_bits < hw.state_bits - 2:
        raise ValueError(f"headroom_bits must be in [0, {hw.state_bits - 2}), got {headroom_bits}")
    trained = network.provenance.get(TRAINED_INTEGERS)
    if trained is not None:
        check_trained_grid(trained, hw, headroom_bits, calibration_images is not None)
    problem = next(filter(None, (graded_payload_problem(layer, hw) for layer in network.spiking_layers)), None)
    if problem:
        raise ValueError(problem)
    mant_max, exp_max = weight_grid(hw)
    layers = [network.input]
    records: Dict[str, dict] = {}
    for layer in network.layers[1:]:
        weight_max = max(float(np.max(np.abs(s.op.weight))) for s in layer.synapses)
        if isinstance(layer, GatedIF):
            scale = neuron_scale(hw, headroom_bits, layer.window_count_max, weight_max, float(np.max(layer.threshold)))
        else:
            scale = readout_scale(hw, weight_max, float(np.max(np.abs(layer.bias), initial=0.0)))
        synapses, exps = zip(*(_quantize_synapse(s, scale, mant_max, exp_max) for s in layer.synapses))
        bias, bias_exp, n_bias_clipped = _quantize_bias(layer.bias * scale, hw)
        changes = dict(synapses=synapses, bias=bias, scale=scale)
        if isinstance(layer, GatedIF):
            changes.update(threshold=np.maximum(np.round(layer.threshold * scale), 1), v_init=np.round(layer.v_init * scale),
                           ann_clip=None if layer.ann_clip is None else layer.ann_clip * scale)
        layers.append(replace(layer, **changes))
        records[layer.name] = {"scale": scale, "weight_exp": list(exps), "bias_exp": bias_exp,
                               "n_bias_clipped": n_bias_clipped}
    provenance = dict(network.provenance)
    provenance["quantization"] = {
        "profile": hw.name, "state_bits": hw.state_bits, "weight_mantissa_bits": hw.weight_mantissa_bits,
        "weight_exp_max": exp_max, "bias_mantissa_bits": hw.bias_mant_bits, "bias_exp_max": hw.bias_exp_max,
        "graded_payload_bits": hw.graded_payload_bits, "headroom_bits": headroom_bits, "calibration_images": 0,
        "rounding": "as trained (fine-tuned on these integers)" if trained is not None else
        "nearest" if calibration_images is None else "error feedback and bias correction",
        "layers": records}
    quantized = Network(layers, numeric="int", provenance=provenance)
    if calibration_images is not None:
        quantized = _calibrate_rounding(network, quantized, calibration_images, hw, mant_max, progress)
    return quantized


#: Input patches (images x output positions) used to estimate a layer's input second moments.
_HESSIAN_SAMPLES = 65536
#: Images whose input patches are unfolded at once while the second moments are accumulated.
_HESSIAN_CHUNK = 8
#: Images whose synaptic input is computed at once while calibrating (torch's float64 convolution unfolds
#: its whole batch: 300 images of a 16-channel 3x3 convolution at 32x32 took 354 MB at once).
_RATE_CHUNK = 32
#: Layers reading more inputs per neuron keep their rounded-to-nearest weights (bias correction still
#: applies): the float64 input covariance and its factors take about 3 x 8 x fan-in**2 bytes (1.5 GiB
#: at this cap; ResNet-34's classifier, its average pooling folded in, reads 25,088 inputs: 14 GiB).
MAX_ERROR_FEEDBACK_FAN_IN = 8192


def _calibrate_rounding(float_net: Network, int_net: Network, images, hw: HardwareProfile, mant_max: int,
                        progress: bool = False) -> Network:
    """``int_net`` with its weights rounded by error feedback and its biases corrected on ``images``.

    Layer by layer, on the integer network's own ANN rates (float64), earlier layers already done:
    the mantissas are rounded with :func:`_error_feedback_rounding` (up to
    :data:`MAX_ERROR_FEEDBACK_FAN_IN` inputs per neuron; grouped convolutions, whose neurons read
    different inputs, are rounded to nearest), then every neuron's bias becomes
    the mean over the images of ``scale * z_float - (z_int - bias_int)``. Relays keep their exact
    identity weights and a zero bias (they pass spikes one for one); their error is corrected in the
    layer they feed.
    """
    import torch
    from tqdm.auto import tqdm

    from .data import as_nchw
    from .sim.ann import activation
    from .sim.kernels import NetworkKernels, SynapseKernel, layer_param

    def by_chunks(compute):  # the images' rows, _RATE_CHUNK at a time: the same values, a bounded im2col
        return torch.cat([compute(slice(i, i + _RATE_CHUNK)) for i in range(0, x.shape[0], _RATE_CHUNK)])

    x = as_nchw(images, float_net.input.shape[0]).to(torch.float64)
    if x.shape[0] == 0:
        raise ValueError("calibrated rounding needs at least one calibration image")
    float_kernels = NetworkKernels(float_net, torch.float64, "cpu")
    last_use = {s.source: i for i, layer in enumerate(float_net.layers) for s in getattr(layer, "synapses", ())}
    rates = {"float": {float_net.input.name: x}, "int": {float_net.input.name: x}}
    layers = [int_net.input]
    records = {name: dict(record) for name, record in int_net.provenance["quantization"]["layers"].items()}
    pairs = tqdm(list(zip(float_net.layers[1:], int_net.layers[1:])), desc="quantize (error-feedback rounding)",
                 unit="layer", disable=not progress, leave=False)
    for i, (layer_f, layer_q) in enumerate(pairs, start=1):
        z_float = by_chunks(lambda part: float_kernels.synaptic_input(
            layer_f.name, {name: r[part] for name, r in rates["float"].items()}, integer_input=False))
        z_float += float_kernels.params[layer_f.name]["bias"]
        is_relay = getattr(layer_q, "role", "") == "relay"
        feedback = (not is_relay and sum(s.op.weight[0].size for s in layer_q.synapses) <= MAX_ERROR_FEEDBACK_FAN_IN
                    and all(getattr(s.op, "groups", 1) == 1 for s in layer_q.synapses))
        if feedback:
            layer_q = replace(layer_q, synapses=_error_feedback_rounding(layer_f, layer_q, rates["int"], mant_max))
        records[layer_q.name]["rounding"] = "error feedback" if feedback else "nearest"
        kernels = [(SynapseKernel(s.op, torch.float64, "cpu", 1.0, s.pool, int_net[s.source].shape), s.source)
                   for s in layer_q.synapses]
        z_int = by_chunks(lambda part: sum(kernel(rates["int"][source][part], integer_input=False)
                                           for kernel, source in kernels))
        if not is_relay:
            # in place on fresh tensors (here and below): the same arithmetic, fewer images x neurons copies
            target = z_float.mul(layer_q.scale).sub_(z_int).mean(dim=0).expand(*layer_q.shape)
            bias, bias_exp, n_clipped = _quantize_bias(target.numpy(), hw)
            layer_q = replace(layer_q, bias=bias)
            records[layer_q.name].update(bias_exp=bias_exp, n_bias_clipped=n_clipped)
        layers.append(layer_q)
        z_int += layer_param(layer_q.bias, layer_q.shape, torch.float64, "cpu")
        for kind, layer, z in (("float", layer_f, z_float), ("int", layer_q, z_int)):
            if isinstance(layer, GatedIF):
                rates[kind][layer.name] = activation(z, layer).div_(layer_param(layer.threshold, layer.shape,
                                                                                torch.float64, "cpu"))
            for source in [s for s in rates[kind] if last_use.get(s, 0) <= i]:
                del rates[kind][source]
    provenance = dict(int_net.provenance)
    provenance["quantization"] = dict(provenance["quantization"], calibration_images=int(x.shape[0]), layers=records)
    return Network(layers, numeric="int", provenance=provenance)


def _error_feedback_rounding(layer_f, layer_q, rates, mant_max: int, block: int = 128) -> Tuple[Synapse, ...]:
    """Mantissas of ``layer_q``'s synapses (exponents kept) that minimise the mean squared error of
    the layer's input over ``rates`` rather than of each weight: GPTQ (Frantar et al., "GPTQ:
    Accurate Post-Training Quantization for Generative Pre-trained Transformers", ICLR 2023; one
    pass over the input columns of all synapses together, 1% damping). Each rounding error is
    pushed onto the not yet rounded weights of the same neuron, weighted by the inputs' covariance
    (estimated on about :data:`_HESSIAN_SAMPLES` input patches; centred, since the bias correction
    that follows removes the mean error). ``block``: columns rounded between two updates of the
    columns after them (GPTQ's lazy batch updates; any value gives the same rounding)."""
    import torch
    import torch.nn.functional as F

    from .sim.kernels import pool_outputs

    def patches(synapse, source_rates):  # (samples, fan-in) in the order of op.weight.reshape(out, -1)
        op = synapse.op
        if synapse.pool is not None:  # the op reads the max-pooled rates
            shape = tuple(source_rates.shape[1:])
            source_rates = pool_outputs(source_rates, torch.as_tensor(synapse.pool.taps(shape)),
                                        synapse.pool.output_shape(shape))
        if isinstance(op, Conv2d):
            cols = F.unfold(source_rates, op.weight.shape[2:], dilation=op.dilation, padding=op.padding,
                            stride=op.stride)
            return cols.transpose(1, 2).reshape(-1, cols.shape[1])
        return source_rates.reshape(source_rates.shape[0], -1)

    def inputs(images: slice):  # (samples, fan-in of all synapses) of some images
        return torch.cat([patches(s, rates[s.source][images]) for s in layer_f.synapses], dim=1)

    n_images = min(rates[layer_f.synapses[0].source].shape[0],
                   math.ceil(_HESSIAN_SAMPLES / math.prod(layer_f.shape[1:])))
    # the centred second moments, accumulated over chunks of images (the patches of all images at
    # once would take 8 x _HESSIAN_SAMPLES x fan-in bytes several times over)
    chunks = [slice(i, min(i + _HESSIAN_CHUNK, n_images)) for i in range(0, n_images, _HESSIAN_CHUNK)]
    n_samples = 0
    mean = 0.0
    for chunk in chunks:
        part = inputs(chunk)
        n_samples += part.shape[0]
        mean = mean + part.sum(dim=0)
    mean = mean / n_samples  # the mean error goes to the bias correction: minimise the spread
    hessian = None
    for chunk in chunks:
        part = inputs(chunk) - mean
        hessian = part.T @ part if hessian is None else hessian.addmm_(part.T, part)
    hessian /= n_samples
    weight = torch.cat([torch.from_numpy(s.op.weight.reshape(s.op.weight.shape[0], -1) * layer_q.scale)
                        for s in layer_f.synapses], dim=1)
    sizes = [s.op.weight[0].size for s in layer_f.synapses]
    grid = torch.cat([torch.full((n,), 2.0 ** s.op.weight_exp, dtype=torch.float64)
                      for n, s in zip(sizes, layer_q.synapses)])
    dead = torch.diag(hessian) == 0
    hessian[dead, dead] = 1.0
    hessian.diagonal().add_(0.01 * torch.diag(hessian).mean())
    order = torch.argsort(torch.diag(hessian), descending=True)  # most active inputs first
    weight, grid = weight[:, order], grid[order]
    hessian = hessian[order]  # each step drops what the next does not need: a classifier reading
    hessian = hessian[:, order]  # 4,096 inputs holds 134 MB per copy of its float64 covariance
    factor = torch.linalg.cholesky(hessian)
    del hessian
    inverse = torch.cholesky_inverse(factor)
    del factor
    inverse_factor = torch.linalg.cholesky(inverse, upper=True)
    del inverse
    rounded = torch.empty_like(weight)
    for start in range(0, weight.shape[1], block):  # GPTQ's lazy batch updates: the same arithmetic,
        end = min(start + block, weight.shape[1])   # the columns after the block updated once per block
        errors = torch.empty((weight.shape[0], end - start), dtype=weight.dtype)
        for j in range(start, end):
            q = torch.clamp(torch.round(weight[:, j] / grid[j]), -mant_max - 1, mant_max) * grid[j]
            error = (weight[:, j] - q) / inverse_factor[j, j]
            weight[:, j:end] -= error[:, None] * inverse_factor[j, j:end][None, :]
            rounded[:, j], errors[:, j - start] = q, error
        weight[:, end:] -= errors @ inverse_factor[start:end, end:]
    mantissas = torch.split((rounded / grid)[:, torch.argsort(order)], sizes, dim=1)
    return tuple(replace(s, op=replace(s.op, weight=m.reshape(s.op.weight.shape).numpy()))
                 for s, m in zip(layer_q.synapses, mantissas))


def _quantize_synapse(synapse: Synapse, scale: float, mant_max: int, exp_max: int) -> Tuple[Synapse, int]:
    """Mantissas (rounded to nearest) and one exponent for ``weight * scale``."""
    scaled = synapse.op.weight * scale
    exp = weight_exponent(float(np.max(np.abs(scaled))), mant_max, exp_max)
    mant = np.clip(np.round(scaled / 2.0 ** exp), -mant_max - 1, mant_max)
    return replace(synapse, op=replace(synapse.op, weight=mant, weight_exp=exp)), exp


def _quantize_bias(scaled: np.ndarray, hw: HardwareProfile) -> Tuple[np.ndarray, int, int]:
    """Integer bias ``mant * 2**exp`` with one exponent per layer; returns (bias, exp, n_clipped)."""
    mant_max = 2 ** (hw.bias_mant_bits - 1) - 1
    exp = bias_exponent(float(np.max(np.abs(scaled))) if scaled.size else 0.0, hw)
    mant = np.round(scaled / 2.0 ** exp)
    n_clipped = int(np.sum(np.abs(mant) > mant_max))
    return np.clip(mant, -mant_max - 1, mant_max) * 2.0 ** exp, exp, n_clipped


# --- the integer grid, scalar by scalar: shared by quantize() and fine-tuning on the grid ---------------

#: Provenance key of a float network whose parameters were fine-tuned on a profile's integer grid
#: (``finetune(..., hw=...)``): ``{"profile", "headroom_bits", "max_exponent", "grid"}``; :func:`quantize`
#: then rounds to nearest with the same settings (the integers the training used) and refuses others.
TRAINED_INTEGERS = "trained_integers"


def integer_grid(profile: Union[str, HardwareProfile], max_exponent: Optional[int] = None) -> HardwareProfile:
    """The hardware profile (a name, path or profile) with its weight and bias exponents capped at
    ``max_exponent`` (``None``: the profile's own)."""
    hw = profile if isinstance(profile, HardwareProfile) else load_profile(profile)
    if max_exponent is not None:
        hw = dataclasses.replace(hw, weight_exp_max=min(hw.weight_exp_max, max_exponent),
                                 bias_exp_max=max(hw.bias_exp_min, min(hw.bias_exp_max, max_exponent)))
    return hw


def grid_fields(hw: HardwareProfile) -> Dict[str, int]:
    """The numbers of ``hw`` that decide a network's integers (compared when a trained network is quantized)."""
    return {"state_bits": hw.state_bits, "weight_mantissa_bits": hw.weight_mantissa_bits,
            "weight_exp_max": hw.weight_exp_max, "bias_mantissa_bits": hw.bias_mant_bits,
            "bias_exp_min": hw.bias_exp_min, "bias_exp_max": hw.bias_exp_max,
            "threshold_mant_max": hw.threshold_mant_max, "threshold_shift": hw.threshold_shift}


def trained_integers_record(hw: HardwareProfile, headroom_bits: int) -> dict:
    """The :data:`TRAINED_INTEGERS` provenance of a network fine-tuned on ``hw``'s grid."""
    return {"profile": hw.name, "headroom_bits": int(headroom_bits), "grid": grid_fields(hw)}


def check_trained_grid(trained: dict, hw: HardwareProfile, headroom_bits: int, calibrated: bool) -> None:
    """``ValueError`` (one line) unless ``hw`` and ``headroom_bits`` are the grid the network was
    fine-tuned on, without calibrated rounding (which would round its trained integers again)."""
    if grid_fields(hw) != trained["grid"] or headroom_bits != trained["headroom_bits"]:
        raise ValueError(f"the network was fine-tuned on {trained['profile']}'s integers (headroom_bits "
                         f"{trained['headroom_bits']}): quantize it for that grid, not {hw.name} with headroom_bits "
                         f"{headroom_bits} (or fine-tune it again with hw={hw.name!r})")
    if calibrated:
        raise ValueError(f"the network was fine-tuned on {trained['profile']}'s integers: quantizing it takes them as "
                         "trained, so calibration_images (error-feedback rounding) would round them a second time; "
                         "leave them out")


def weight_grid(hw: HardwareProfile) -> Tuple[int, int]:
    """``(mant_max, exp_max)``: the largest weight mantissa and weight exponent of ``hw``."""
    return 2 ** (hw.weight_mantissa_bits - 1) - 1, max(0, hw.weight_exp_max)


def neuron_scale(hw: HardwareProfile, headroom_bits: int, count_max: int, weight_max: float, theta_max: float) -> float:
    """The integer scale (integer units per float unit) of a spiking layer: the largest weight gets
    the full mantissa at the largest exponent E for which the largest threshold stays below
    ``2**(state_bits - 1 - headroom_bits - ceil(log2(count_max + 1)))`` (and the profile's threshold
    limit); ``count_max``: the largest output of one fire window."""
    mant_max, exp_max = weight_grid(hw)
    weight_max = weight_max or 1.0
    window_bits = math.ceil(math.log2(count_max + 1))
    theta_cap = min(2.0 ** (hw.state_bits - 1 - headroom_bits - window_bits),
                    hw.threshold_mant_max * 2.0 ** hw.threshold_shift)
    # largest E with mant_max * 2**E / weight_max * theta_max <= theta_cap
    exp = int(np.clip(math.floor(math.log2(theta_cap * weight_max / (mant_max * theta_max))), 0, exp_max))
    return min(mant_max * 2.0 ** exp / weight_max, theta_cap / theta_max)


def readout_scale(hw: HardwareProfile, weight_max: float, bias_max: float) -> float:
    """The readout's integer scale: the largest weight gets the full mantissa with exponent 0, or
    less where the bias (``bias_max``, float units, added on every integrate step) would fill the
    state within :data:`READOUT_RUN_STEPS` steps."""
    scale = weight_grid(hw)[0] / (weight_max or 1.0)
    if bias_max > 0:
        scale = min(scale, 2.0 ** (hw.state_bits - 1) / (READOUT_RUN_STEPS * bias_max))
    return scale


def weight_exponent(peak: float, mant_max: int, exp_max: int) -> int:
    """The exponent of a synapse whose largest scaled weight is ``peak`` (integer units)."""
    return 0 if peak <= mant_max else min(exp_max, math.ceil(math.log2(peak / mant_max)))


def bias_exponent(peak: float, hw: HardwareProfile) -> int:
    """The smallest bias exponent of ``hw`` at which a bias of ``peak`` (integer units) fits the mantissa."""
    mant_max = 2 ** (hw.bias_mant_bits - 1) - 1
    exp = hw.bias_exp_min
    while exp < hw.bias_exp_max and round(peak / 2.0 ** exp) > mant_max:
        exp += 1
    return exp
