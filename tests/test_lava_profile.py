"""Profiler counts from a Lava run equal those from the reference run; the CLI's Lava backends."""
import numpy as np
import pytest

from bsnn_lava import convert, simulate
from bsnn_lava.cli import main
from bsnn_lava.lava.run import run_lava
from bsnn_lava.profile import profile_run
from bsnn_lava.quantize import quantize

from conftest import OptionAResNet, randomize_batchnorm

pytestmark = pytest.mark.timeout(600)


def test_profile_counts_from_lava_equal_the_reference(images):
    x, y = images
    network = quantize(convert(randomize_batchnorm(OptionAResNet()), x, window=2), "loihi2")
    steps = network.readout.schedule.offset_steps + 6
    reference = simulate(network, x[:2], y[:2], steps=steps, method="step")
    lava = run_lava(network, x[:2], y[:2], steps=steps, progress=False)
    np.testing.assert_array_equal(lava.n_spikes_per_step, reference.n_spikes_per_step)
    assert lava.synapse_names == reference.synapse_names
    np.testing.assert_array_equal(lava.n_synops_per_step, reference.n_synops_per_step)
    ours, theirs = profile_run(network, lava, "loihi2").to_dict(), profile_run(network, reference, "loihi2").to_dict()
    assert ours == theirs
    assert ours["synops"] > 0 and ours["synops_by_kind"]["shortcut"] > 0


def test_cli_simulate_backends(tmp_path, images, capsys):
    import netx_export

    x, y = images
    network = quantize(convert(randomize_batchnorm(OptionAResNet()), x, window=2), "loihi2")
    path = netx_export.write(network, tmp_path / "net.h5")
    data = tmp_path / "data.npz"
    np.savez(data, x=x[:2], y=y[:2])
    steps = str(network.readout.schedule.offset_steps + 4)
    assert main(["simulate", str(path), "--data", str(data), "--steps", steps, "--json", str(tmp_path / "t.json")]) == 0
    assert main(["simulate", str(path), "--data", str(data), "--steps", steps, "--backend", "lava",
                 "--json", str(tmp_path / "l.json")]) == 0
    import json

    torch_run, lava_run = (json.loads((tmp_path / f).read_text()) for f in ("t.json", "l.json"))
    for key in ("accuracy", "n_spikes", "n_synops", "n_sin", "n_lost_input", "n_saturated"):
        assert torch_run[key] == lava_run[key], key
    capsys.readouterr()
    assert main(["simulate", str(path), "--data", str(data), "--steps", steps, "--backend", "loihi2"]) == 2
    assert "lava-loihi" in capsys.readouterr().err
