"""Fine-tuning for the chip: the folded network trained on a profile's integers (``hw=``) and for
energy (``energy=``, ``rate_target=``). What it must keep: the integer network predicts exactly what
the trained model predicts, the energy term counts what ``bsnn profile`` counts, resume is bit-exact."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import netx_export
from bsnn_lava import zoo
from bsnn_lava.conversion import convert
from bsnn_lava.data import as_nchw
from bsnn_lava.datasets import load_digits_uint8
from bsnn_lava.demo import DigitsResNet, train_digits_model
from bsnn_lava.profile import frame_energy, profile_run
from bsnn_lava.quantize import quantize
from bsnn_lava.sim import frame_forward, simulate
from bsnn_lava.training import finetune, restore
from bsnn_lava.training.folded import FoldedNetwork, FrameCost, frame_cost
from hw_profiles import load_profile
from conftest import interrupted_finetune

pytestmark = pytest.mark.timeout(600)


class MaxPoolNet(nn.Module):
    """conv-BN-ReLU-max pool (3x3/2, padded) and a conv after it, on 8x8 digits."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1), nn.Conv2d(8, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


@pytest.fixture(scope="module")
def digits():
    x_train, y_train, x_test, y_test = load_digits_uint8()
    return x_train[:400], y_train[:400], x_test[:120], y_test[:120]


@pytest.fixture(scope="module")
def bases(digits):
    x, y, _, _ = digits
    torch.manual_seed(0)
    pooled = MaxPoolNet()
    pooled = finetune(pooled, x, y, window=None, epochs=2, batch_size=64, augment=False, progress=False, lr=0.05)
    return {"resnet": train_digits_model(x, y, epochs=2), "maxpool": pooled}


def chip_finetune(base, digits, **kwargs):
    x, y, _, _ = digits
    options = dict(window=2, epochs=2, batch_size=64, augment=False, progress=False, n_calibration=100, n_check=50)
    options.update(kwargs)
    return finetune(base, x, y, **options)


@pytest.mark.parametrize("spikes", ["binary", "graded"])
@pytest.mark.parametrize("name", ["resnet", "maxpool"])
def test_the_integer_network_predicts_what_the_hw_trained_model_predicts(name, spikes, digits, bases):
    """On every test image: the trained model (its eval forward pass), its training forward pass in
    float64 (the same integers, no rounding left to chance), the integer network that convert and
    quantize give (integers as trained), and that network simulated at every complete frame."""
    _, _, x_test, y_test = digits
    tuned = chip_finetune(bases[name], digits, hw="loihi2", spikes=spikes, energy=0.05)
    assert isinstance(tuned, FoldedNetwork) and tuned.finetune_record["fold"]["hw"] == "loihi2"
    images = as_nchw(x_test, 1)
    with torch.no_grad():
        predicted = tuned(images).argmax(1)
    network = quantize(convert(tuned, x_test[:4]), "loihi2")
    assert network.provenance["quantization"]["rounding"].startswith("as trained")
    assert network.spikes == spikes and network.frame_reset
    readout, counts = frame_forward(network, images.double())
    assert torch.equal(readout.argmax(1), predicted)
    training = FoldedNetwork(network=tuned.skeleton, hw=tuned.hw).double()
    training.load_state_dict(tuned.state_dict())
    training.train()
    with torch.no_grad():
        logits, train_counts = training.frame(images.double())
    assert torch.equal(torch.round(logits * network.window_steps * network.readout.scale), readout)
    for layer, c in counts.items():
        assert torch.equal(train_counts[layer], c), layer
    frames = network.complete_frames(network.latency_steps + 2 * network.frame_steps)
    result = simulate(network, x_test, y_test, steps=frames[-1], frames="all")
    for t in frames:
        np.testing.assert_array_equal(result.predictions_per_step[t - 1], predicted.numpy())


def test_lava_runs_the_hw_trained_integers_spike_for_spike(digits, bases):
    from test_lava_parity import assert_parity

    _, _, x_test, y_test = digits
    tuned = chip_finetune(bases["resnet"], digits, hw="loihi2", spikes="graded")
    network = quantize(convert(tuned, x_test[:4]), "loihi2")
    assert_parity(network, x_test[:3], y_test[:3], network.latency_steps + network.frame_steps, frames="all")


@pytest.mark.parametrize("spikes", ["binary", "graded"])
def test_the_energy_term_counts_what_the_profile_counts(spikes, digits, bases):
    """FrameCost on the frame's counts = the synaptic operations, graded ones and spikes of a
    one-frame run in the reference simulator, and frame_energy = the profile's dynamic energy."""
    x, _, x_test, y_test = digits
    for name, base in bases.items():
        tuned = chip_finetune(base, digits, window=3, spikes=spikes, energy=0.01, fold_epochs=1)
        for network in (tuned.deployed(), quantize(convert(tuned, x[:4]), "loihi2", calibration_images=x[:50])):
            run = simulate(network, x_test, y_test, frames=1, steps=network.latency_steps)
            profile = profile_run(network, run, "loihi2")
            cost = frame_cost(network, as_nchw(x_test, 1))
            assert cost["synops"] == pytest.approx(profile.synops, rel=1e-12), name
            assert cost["synops_graded"] == pytest.approx(profile.synops_graded, rel=1e-12), name
            assert cost["spikes"] == pytest.approx(profile.spikes, rel=1e-12), name
            energy = frame_energy(network, cost["synops"], cost["synops_graded"], cost["spikes"], "loihi2")
            for mode in ("one_at_a_time", "streamed"):
                assert energy[mode] == pytest.approx(profile.throughput[mode]["energy_nj"]["dynamic"] / 1e3, rel=1e-12)
        tuned.train()  # the training forward pass counts the same on the float network
        with torch.no_grad():
            _, counts = tuned.frame(as_nchw(x_test, 1))
        float_cost = frame_cost(tuned.deployed(), as_nchw(x_test, 1))
        assert float(FrameCost(tuned.skeleton)(counts)[0].mean()) == pytest.approx(float_cost["synops"], rel=1e-5)


def test_a_larger_energy_weight_gives_fewer_synaptic_operations(digits, bases):
    synops = []
    for energy in (0.0, 3.0):
        tuned = chip_finetune(bases["resnet"], digits, epochs=3, fold_epochs=2, hw="loihi2", spikes="graded",
                              energy=energy, fold_lr=2e-3)
        synops.append(tuned.finetune_record["history"][-1]["synops"])
    assert synops[1] < 0.9 * synops[0]
    rated = chip_finetune(bases["resnet"], digits, epochs=3, fold_epochs=2, hw="loihi2", spikes="graded",
                          rate_target=0.0, rate_weight=30.0, fold_lr=2e-3)
    assert rated.finetune_record["history"][-1]["synops"] < synops[0]


def test_the_folded_epochs_resume_bit_exactly_and_the_record_says_what_ran(tmp_path, monkeypatch, digits, bases):
    x, y, _, _ = digits
    kwargs = dict(window=2, epochs=3, fold_epochs=2, batch_size=64, progress=False, n_calibration=100, n_check=50,
                  augment=True, hw="loihi2", energy=0.05)
    straight = finetune(bases["resnet"], x, y, checkpoint=tmp_path / "straight.th", **kwargs)
    record = straight.finetune_record
    assert record["fold_epochs"] == 2 and len(record["history"]) == 2 and len(record["float_phase"]["history"]) == 1
    assert record["fold"]["energy"] == 0.05 and record["fold"]["grid"]["state_bits"] == 24
    for entry in record["history"] + record["float_phase"]["history"]:
        assert entry["synops"] > 0 and entry["energy_uj"]["streamed"] < entry["energy_uj"]["one_at_a_time"]
    for after in (1, 2):  # interrupted after the float epoch, and after the first folded one
        path = tmp_path / f"resumed{after}.th"
        interrupted_finetune(monkeypatch, after, lambda: finetune(bases["resnet"], x, y, checkpoint=path, **kwargs))
        resumed = finetune(bases["resnet"], x, y, checkpoint=path, resume=True, **kwargs)
        for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
            assert torch.equal(a, b), (after, name)
    loaded = restore(DigitsResNet(), *zoo.read_checkpoint(tmp_path / "straight.th"), "straight.th", "DigitsResNet")
    assert isinstance(loaded, FoldedNetwork)
    for (name, a), b in zip(straight.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="fold settings"):
        finetune(bases["resnet"], x, y, checkpoint=tmp_path / "straight.th", resume=True, **{**kwargs, "energy": 0.1})


def test_quantize_takes_the_trained_integers_and_refuses_a_second_rounding(digits, bases):
    x, _, _, _ = digits
    tuned = chip_finetune(bases["resnet"], digits, hw="loihi2")
    network = convert(tuned, x[:4])
    with pytest.raises(ValueError, match="second time"):
        quantize(network, "loihi2", calibration_images=x[:20])
    with pytest.raises(ValueError, match="headroom_bits 6"):
        quantize(network, "loihi2", headroom_bits=4)
    with pytest.raises(ValueError, match="for that grid"):
        quantize(network, "loihi2", max_exponent=0)
    with pytest.raises(ValueError, match="spikes='graded' would change it"):
        convert(tuned, x[:4], spikes="graded")
    with pytest.raises(ValueError, match="window=4 would change it"):
        convert(tuned, x[:4], window=4)
    assert convert(tuned, x[:4], frames=1).readout.schedule.frames == 1


def test_finetune_refuses_what_the_folded_epochs_cannot_do(digits, bases):
    x, y, _, _ = digits
    cases = [(dict(window=None, hw="loihi2"), "window fine-tune"), (dict(energy=-1.0), "energy must be"),
             (dict(rate_target=1.5), "rate_target must be"), (dict(hw="loihi9"), "loihi9"),
             (dict(energy=0.1, fold_epochs=2), "fold_epochs must be"), (dict(spikes="analog"), "spikes must be"),
             (dict(fold_lr=0.0, hw="loihi2"), "fold_lr must be positive")]
    for options, pattern in cases:
        with pytest.raises(Exception, match=pattern):
            finetune(bases["resnet"], x, y, **{**dict(window=2, epochs=2, progress=False), **options})
    tuned = chip_finetune(bases["resnet"], digits, energy=0.01)
    with pytest.raises(ValueError, match="already a folded network"):
        finetune(tuned, x, y, window=2, epochs=2, progress=False)


def _bsnn(capsys, *args):
    """``bsnn *args`` in this process (exit code, stdout, stderr): a subprocess would import torch again per call."""
    from bsnn_lava.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse's refusals
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_finetune_hw_then_convert_writes_the_same_trained_integers_twice(tmp_path, digits, capsys, monkeypatch):
    x, y, _, _ = digits
    torch.save(train_digits_model(x, y, epochs=1).state_dict(), tmp_path / "d.th")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "chip_digits_net.py").write_text("from bsnn_lava.demo import DigitsResNet\n\ndef build():\n"
                                            "    return DigitsResNet()\n")
    common = ["--factory", "chip_digits_net:build", "--mean", "0", "--std", "1"]
    code, out, err = _bsnn(capsys, "finetune", "d.th", *common, "--data", "digits:train", "--limit", "200", "--window",
                           "2", "--epochs", "2", "--no-augment", "--hw", "loihi2", "--spikes", "graded", "--energy",
                           "0.05", "--out", "ft.th")
    assert code == 0, err
    assert "on loihi2's integers" in err and "synops/image" in out
    for out in ("a.h5", "b.h5"):
        code, _, err = _bsnn(capsys, "convert", "ft.th", *common, "--calib", "digits:train", "--out", out)
        assert code == 0 and "integers as trained" in err, err
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()
    network = netx_export.read(tmp_path / "a.h5")
    assert network.numeric == "int" and network.spikes == "graded"
    folded = zoo.read_checkpoint(tmp_path / "ft.th")
    tuned = restore(DigitsResNet(), *folded, "ft.th", "DigitsResNet")
    expected = quantize(convert(tuned, x[:4]), "loihi2")
    for mine, theirs in zip(network.layers[1:], expected.layers[1:]):
        for s, t in zip(mine.synapses, theirs.synapses):
            np.testing.assert_array_equal(s.op.weight, t.op.weight)
    refusals = [(["--hw", "loihi1"], "graded spikes"), (["--spikes", "binary"], "would change it"),
                (["--headroom-bits", "3"], "headroom_bits 6")]
    for flags, pattern in refusals:
        code, _, err = _bsnn(capsys, "convert", "ft.th", *common, "--calib", "digits:train", "--out", "c.h5", *flags)
        assert code == 2 and pattern in err, (flags, err)
        assert not (tmp_path / "c.h5").exists()
    for flags, pattern in [(["--relu", "--hw", "loihi2"], "--relu fine-tune has none"),
                           (["--energy", "-1"], "must be a number >= 0"), (["--hw", "loihi9"], "loihi9")]:
        code, _, err = _bsnn(capsys, "finetune", "d.th", *common, "--data", "digits:train", "--out", "x.th", *flags)
        assert code == 2 and pattern in err and len(err.strip().splitlines()) == 1, (flags, err)


def test_the_cli_default_fold_rate_is_the_trainers():
    from bsnn_lava.cli import FOLD_LR_DEFAULT
    from bsnn_lava.training.trainer import FOLD_LR

    assert FOLD_LR_DEFAULT == FOLD_LR
