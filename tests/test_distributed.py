"""Data-parallel runs: shards merged equal one run; torchrun with 2 CPU ranks equals one process."""
import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import netx_export
from bsnn_lava import convert, simulate
from bsnn_lava.datasets import load_digits_uint8
from bsnn_lava.demo import DigitsResNet
from bsnn_lava.distributed import merge_results, shard
from bsnn_lava.quantize import quantize

from conftest import randomize_batchnorm

N_IMAGES, STEPS = 31, 24


@pytest.fixture(scope="module")
def digits():
    x_train, _, x_test, y_test = load_digits_uint8()
    return x_train[:100], x_test[:N_IMAGES], y_test[:N_IMAGES]


@pytest.fixture(scope="module")
def networks(digits):
    """A float and an integer network each of the bistable and the IF kind."""
    calib = digits[0]
    torch.manual_seed(0)
    model = randomize_batchnorm(DigitsResNet())
    bsnn, if_net = convert(model, calib), convert(model, calib, neuron="if")
    return {"bsnn float": bsnn, "bsnn int": quantize(bsnn, "loihi2"), "if float": if_net,
            "if int": quantize(if_net, "loihi2"), "bsnn reset int": quantize(convert(model, calib, frame_reset=True),
                                                                        "loihi2")}


def assert_same_result(a, b):
    for field in dataclasses.fields(a):
        if field.name == "extras":
            continue
        x, y = getattr(a, field.name), getattr(b, field.name)
        if field.name == "stream" and x is not None:
            x, y = dataclasses.asdict(x), dataclasses.asdict(y)
        if isinstance(x, dict):
            assert x.keys() == y.keys(), field.name
            for key in x:
                np.testing.assert_array_equal(x[key], y[key], err_msg=f"{field.name}[{key}]")
        else:
            np.testing.assert_array_equal(x, y, err_msg=field.name)


def test_shards_cover_the_images_in_order():
    for n, world in ((31, 2), (10, 3), (5, 5), (1000, 7)):
        parts = [shard(n, r, world) for r in range(world)]
        assert [i for p in parts for i in range(n)[p]] == list(range(n))
        sizes = [p.stop - p.start for p in parts]
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("kind", ["bsnn float", "bsnn int", "if float", "if int"])
def test_merged_shards_equal_one_run(networks, digits, kind):
    _, x, y = digits
    network = networks[kind]
    whole = simulate(network, x, y, steps=STEPS, batch_size=8)
    parts = [simulate(network, x[s], y[s], steps=STEPS, batch_size=8) for s in (shard(N_IMAGES, r, 3) for r in range(3))]
    merged = merge_results(parts, y)
    assert_same_result(merged, whole)
    assert json.dumps(merged.summary(y)) == json.dumps(whole.summary(y))
    assert sum(whole.n_spikes.values()) > 0 and 0 < whole.accuracy[-1] < 1


def test_runs_without_the_ann_merge_and_count_the_same(networks, digits):
    """ann=False: the same spikes, synaptic operations and predictions, no ANN fields, one image at a
    time and streamed (lane shares merged), on both paths."""
    _, x, y = digits
    network = networks["bsnn reset int"]
    for method in ("step", "window"):
        with_ann = simulate(network, x, y, steps=STEPS, batch_size=8, method=method)
        parts = [simulate(network, x[s], y[s], steps=STEPS, batch_size=8, method=method, ann=False)
                 for s in (shard(N_IMAGES, r, 3) for r in range(3))]
        without = merge_results(parts, y)
        assert without.ann_predictions is None and without.ann_accuracy is None and without.n_sin is None
        assert with_ann.ann_predictions is not None and with_ann.n_sin
        for name in ("predictions_per_step", "accuracy", "n_spikes_per_step", "n_synops_per_step"):
            np.testing.assert_array_equal(getattr(without, name), getattr(with_ann, name), err_msg=f"{method} {name}")
        assert "ann_prediction" not in without.summary(y)["images"]
        streamed = simulate(network, x, y, stream=True, batch_size=4, method=method)
        bare = simulate(network, x, y, stream=True, batch_size=4, method=method, ann=False)
        np.testing.assert_array_equal(bare.stream.readout, streamed.stream.readout)
        np.testing.assert_array_equal(bare.n_spikes_per_step, streamed.n_spikes_per_step)
        assert bare.final_accuracy == streamed.final_accuracy and bare.n_sin is None


def test_merge_refuses_different_runs(networks, digits):
    _, x, y = digits
    a = simulate(networks["bsnn float"], x[:5], y[:5], steps=STEPS)
    b = simulate(networks["bsnn float"], x[5:9], y[5:9], steps=STEPS + 1)
    with pytest.raises(ValueError, match="different steps"):
        merge_results([a, b])


def test_distributed_needs_a_launch(networks, digits):
    _, x, y = digits
    with pytest.raises(ValueError, match="torchrun"):
        simulate(networks["bsnn float"], x, y, steps=4, distributed=True)


def _torchrun(tmp_path, *args, timeout=600):
    """Run ``args`` under torchrun with 2 CPU ranks; its log directory goes under ``tmp_path``, not /tmp."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "--log-dir", str(tmp_path / "torchelastic"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_torchrun_two_ranks_equal_one_process(networks, digits, tmp_path):
    """Two CPU ranks (gloo): reference simulator for float and integer, BSNN and IF networks, and
    the Lava CPU models for the integer BSNN, each equal to a one-process run."""
    _, x, y = digits
    paths = {}
    for kind, network in networks.items():
        paths[kind] = tmp_path / f"{kind.replace(' ', '_')}.h5"
        netx_export.write(network, paths[kind])
    out = tmp_path / "results.pkl"
    done = _torchrun(tmp_path, Path(__file__).parent / "torchrun_worker.py", *paths.values(),
                     "--lava", paths["bsnn int"], "--stream", paths["bsnn reset int"], "--images", N_IMAGES,
                     "--steps", STEPS, "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    results = pickle.loads(out.read_bytes())
    for kind, path in paths.items():
        one = simulate(netx_export.read(path), x, y, steps=STEPS, batch_size=7)
        assert_same_result(results[str(path)], one)
    from bsnn_lava.lava.run import run_lava

    lava = results["lava:" + str(paths["bsnn int"])]
    assert_same_result(lava, run_lava(paths["bsnn int"], x, y, steps=STEPS, progress=False, batch_size=3))
    assert len(lava.extras["timing_per_rank"]) == 2
    streamed = str(paths["bsnn reset int"])  # each rank streams its share of the lanes: the same steps
    assert_same_result(results["stream:" + streamed], simulate(netx_export.read(streamed), x, y, stream=True,
                                                               batch_size=7))
    assert_same_result(results["lava-stream:" + streamed], run_lava(streamed, x, y, stream=True, progress=False,
                                                                    batch_size=3))
    assert results["stream:" + streamed].stream.n_rounds == 5


@pytest.mark.parametrize("kind, run_args", [("bsnn int", ["--steps", STEPS]),
                                            ("bsnn reset int", ["--stream", "--batch-size", 4])])
def test_torchrun_cli_writes_the_one_process_json(networks, tmp_path, kind, run_args):
    net = tmp_path / "net.h5"
    netx_export.write(networks[kind], net)
    args = ["simulate", net, "--data", "digits", "--limit", N_IMAGES, *run_args]
    done = _torchrun(tmp_path, "-m", "bsnn_lava", *args, "--json", tmp_path / "two.json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sum(line.startswith(f"{N_IMAGES} images") for line in done.stdout.splitlines()) == 1  # rank 0 reports
    one = subprocess.run([sys.executable, "-m", "bsnn_lava", *map(str, args), "--json", tmp_path / "one.json"],
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    assert (tmp_path / "two.json").read_text() == (tmp_path / "one.json").read_text()
    assert done.stdout.splitlines()[0] == one.stdout.splitlines()[0]
