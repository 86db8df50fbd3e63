"""Streamed inference: a new round of images every frame, one prediction per image at the end of its
frame; equal to each image run alone (reference, both paths; Lava spike for spike), priced per image."""
import json

import numpy as np
import pytest
import torch

import netx_export
from bsnn_lava.conversion import convert
from bsnn_lava.dynamics import StreamPlan, gated_if_step, stream_frame, stream_prediction_step, stream_steps
from bsnn_lava.lava.run import run_lava
from bsnn_lava.profile import profile_run
from bsnn_lava.quantize import quantize
from bsnn_lava.sim import frame_forward, simulate
from bsnn_lava.training import calibrate_thresholds, clip_floor_shift_model
from conftest import OptionAResNet, TVStyleResNet, normalized, randomize_batchnorm
from test_lava_parity import first_mismatch

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.3, 0.2)
N_IMAGES = 13  # batches of 4 end in a partial round of 1


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, size=(N_IMAGES, 16, 16, 3), dtype=np.uint8), rng.integers(0, 10, size=N_IMAGES)


def _network(model_cls, levels, spikes, x, integer=False, seed=0):
    torch.manual_seed(seed)
    model = clip_floor_shift_model(randomize_batchnorm(model_cls(), seed), levels, (3, 16, 16)).double()
    calibrate_thresholds(model, normalized(x, MEAN, STD))
    network = convert(model, x, mean=MEAN, std=STD, spikes=spikes)
    return model, quantize(network, "loihi2", calibration_images=x) if integer else network


# --- the plan and the neuron step -------------------------------------------------------------------------

def test_stream_plan_places_images_round_by_round():
    plan = StreamPlan(10, 4)
    assert plan.n_rounds == 3 and [plan.active_lanes(k) for k in (-1, 0, 1, 2, 3)] == [0, 4, 4, 2, 0]
    assert plan.round_images(2) == (8, 10) and plan.image_indices() == list(range(10))
    share = StreamPlan(10, 4, 2, 4)  # a rank's lanes 2 and 3
    assert share.run_lanes == 2 and share.image_indices() == [2, 3, 6, 7]
    assert [share.active_lanes(k) for k in range(3)] == [2, 2, 0]
    assert sorted(StreamPlan(10, 4, 0, 2).image_indices() + share.image_indices()) == list(range(10))
    for bad in (dict(n_images=0, lanes=1), dict(n_images=3, lanes=0), dict(n_images=3, lanes=2, lane_start=2)):
        with pytest.raises(ValueError):
            StreamPlan(**bad)


def test_stream_timing():
    # P = 2, input offset -2: its frame k is steps 4k - 2 .. 4k + 1, and it shows round k on 4k, 4k + 1 (firing)
    assert [stream_frame(t, -2, 2) for t in (0, 1, 2, 3, 4, 5)] == [0, 0, 1, 1, 1, 1]
    assert stream_steps(1, 18, 2) == 18 and stream_steps(5, 18, 2) == 18 + 4 * 4
    assert [stream_prediction_step(k, 18, 2) for k in (0, 1)] == [17, 21]


@pytest.mark.parametrize("xp", [np, torch])
@pytest.mark.parametrize("payload_max", [1, 3])
def test_idle_lanes_keep_their_state_and_send_nothing(xp, payload_max):
    v = xp.asarray(np.array([[5.0, 9.0], [7.0, 1.0], [8.0, 8.0]]))
    a_in = xp.asarray(np.array([[1.0, 0.0], [2.0, 3.0], [4.0, 0.0]]))
    full = gated_if_step(v, a_in, 0.0, 2.0, True, True, state_bits=4, payload_max=payload_max, per_sample=True)
    part = gated_if_step(v, a_in, 0.0, 2.0, True, True, state_bits=4, payload_max=payload_max, per_sample=True,
                         active_lanes=2)
    np.testing.assert_array_equal(np.asarray(part[0][:2]), np.asarray(full[0][:2]))
    np.testing.assert_array_equal(np.asarray(part[1][:2]), np.asarray(full[1][:2]))
    assert not np.asarray(part[0][2]).any() and np.array_equal(np.asarray(part[1][2]), [8.0, 8.0])
    assert np.asarray(full[3])[2] > 0 and list(np.asarray(part[3])) == [*np.asarray(full[3])[:2], 0]  # saturation
    lost = gated_if_step(v, a_in, 0.0, 2.0, False, False, per_sample=True, active_lanes=1)[2]
    assert list(np.asarray(lost)) == [1, 0, 0]


# --- exactness ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_cls, levels, spikes", [(OptionAResNet, 2, "binary"), (TVStyleResNet, 3, "graded"),
                                                        (OptionAResNet, 4, "graded")])
def test_every_streamed_prediction_is_the_image_alone(model_cls, levels, spikes, data):
    """Float64: each image's streamed prediction is its prediction run alone (first frame) and the
    clip-floor-shift model's class; both paths, batches ending in a partial round; the readout
    potentials equal the first frame's; every count equals one frame per image."""
    x, y = data
    model, network = _network(model_cls, levels, spikes, x)
    with torch.no_grad():
        model_class = model(normalized(x, MEAN, STD)).argmax(1).numpy()
    alone = simulate(network, x, y, steps=network.latency_steps, method="step", record=True, dtype=torch.float64)
    np.testing.assert_array_equal(alone.predictions, model_class)
    first_frame = alone.extras["readout_v"][network.latency_steps - 1]
    for batch_size in (1, 4):
        runs = {method: simulate(network, x, y, stream=True, batch_size=batch_size, method=method, dtype=torch.float64)
                for method in ("step", "window")}
        for method, run in runs.items():
            assert run.n_steps == stream_steps(-(-N_IMAGES // batch_size), network.latency_steps, network.window_steps)
            np.testing.assert_array_equal(run.predictions, model_class, err_msg=method)
            # float sums in another batch layout may round differently in the last bit (integer networks: exact)
            np.testing.assert_allclose(run.stream.readout, first_frame, rtol=1e-12, atol=1e-12, err_msg=method)
            assert run.n_spikes == alone.n_spikes and run.n_sin == alone.n_sin and run.n_lost_input == alone.n_lost_input
            assert run.n_synops_per_step.sum() == alone.n_synops_per_step.sum()
            assert run.final_accuracy == alone.final_accuracy and run.ann_accuracy == alone.ann_accuracy
        for field in ("n_spikes_per_step", "n_synops_per_step", "predictions", "ann_predictions"):
            np.testing.assert_array_equal(getattr(runs["step"], field), getattr(runs["window"], field), err_msg=field)
        assert runs["step"].n_sin == runs["window"].n_sin
        assert runs["step"].stream.prediction_step.tolist() == [
            stream_prediction_step(i // batch_size, network.latency_steps, network.window_steps) for i in range(N_IMAGES)]


@pytest.mark.parametrize("spikes, levels", [("binary", 2), ("graded", 4)])
def test_integer_stream_readout_is_the_integer_frame(spikes, levels, data):
    x, y = data
    _, network = _network(TVStyleResNet, levels, spikes, x, integer=True)
    readout, _ = frame_forward(network, torch.as_tensor(x).permute(0, 3, 1, 2))
    for method in ("step", "window"):
        run = simulate(network, x, y, stream=True, batch_size=4, method=method)
        np.testing.assert_array_equal(run.stream.readout, readout.numpy(), err_msg=method)
        np.testing.assert_array_equal(run.predictions, readout.argmax(1).numpy())


@pytest.mark.parametrize("spikes, levels, batch_size", [("binary", 2, 1), ("binary", 2, 4), ("graded", 3, 4)])
def test_lava_stream_equals_the_reference_stream_spike_for_spike(spikes, levels, batch_size, data):
    """Integer networks: every spike (payload) of every lane at every step, the readout potentials at
    every step and at each image's prediction, every counter, SIN."""
    x, y = data
    _, network = _network(OptionAResNet, levels, spikes, x[:7], integer=True, seed=2)
    ref = simulate(network, x[:7], y[:7], stream=True, batch_size=batch_size, method="step", record=True)
    lava = run_lava(network, x[:7], y[:7], stream=True, batch_size=batch_size, record=True, progress=False)
    assert first_mismatch(ref, lava) is None, first_mismatch(ref, lava)
    np.testing.assert_array_equal(lava.stream.readout, ref.stream.readout)
    np.testing.assert_array_equal(lava.stream.prediction_step, ref.stream.prediction_step)
    assert lava.n_steps == ref.n_steps and lava.final_correct == ref.final_correct
    assert sum(ref.n_sin.values()) > 0 and sum(ref.n_spikes.values()) > 0


def test_streaming_is_refused_where_frames_are_not_independent(data):
    x, y = data
    model = randomize_batchnorm(OptionAResNet())
    with pytest.raises(ValueError, match="IF networks have no frames"):
        simulate(convert(model, x, neuron="if", mean=MEAN, std=STD), x, y, stream=True)
    post_training = convert(model, x, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="--frame-reset"):
        simulate(post_training, x, y, stream=True)
    with pytest.raises(ValueError, match="--frame-reset"):
        run_lava(quantize(post_training, "loihi2"), x, y, stream=True, progress=False)
    with_reset = convert(model, x, mean=MEAN, std=STD, frame_reset=True)  # streams its P-level quantized ANN
    with pytest.raises(ValueError, match="give no steps"):
        simulate(with_reset, x, y, stream=True, steps=40)
    with pytest.raises(ValueError, match="a frame limit applies"):
        simulate(with_reset, x, y, stream=True, frames=2)
    streamed = simulate(with_reset, x, y, stream=True, dtype=torch.float64)
    np.testing.assert_array_equal(streamed.predictions, simulate(with_reset, x, y, steps=with_reset.latency_steps,
                                                                   dtype=torch.float64).predictions)


# --- profile and command line -------------------------------------------------------------------------------

def test_streamed_profile_charges_one_frame_period_per_image(data):
    x, y = data
    _, network = _network(OptionAResNet, 2, "binary", x, integer=True)
    streamed = profile_run(network, simulate(network, x, y, stream=True, batch_size=4), "loihi2")
    alone = profile_run(network, simulate(network, x, y, steps=network.latency_steps), "loihi2")
    n_neurons = sum(int(np.prod(layer.shape)) for layer in network.layers[1:])
    assert streamed.streamed and streamed.energy_nj_vs_steps == []
    assert streamed.neuron_updates == n_neurons * network.frame_steps
    assert alone.neuron_updates == n_neurons * network.latency_steps
    assert streamed.spikes == pytest.approx(alone.spikes) and streamed.synops == pytest.approx(alone.synops)
    for profile in (streamed, alone):  # both ways in either profile
        one, stream = profile.throughput["one_at_a_time"], profile.throughput["streamed"]
        assert one["steps_per_image"] == network.latency_steps and stream["steps_per_image"] == network.frame_steps
        assert stream["images_per_s"] / one["images_per_s"] == pytest.approx(network.latency_steps / network.frame_steps)
        assert stream["energy_nj"]["dynamic"] < one["energy_nj"]["dynamic"]
        assert stream["energy_nj"]["static"] * network.latency_steps == pytest.approx(
            one["energy_nj"]["static"] * network.frame_steps)
        assert "PilotNet" in profile.throughput_sources["step_time_us"]
    assert streamed.throughput["streamed"]["energy_nj"]["dynamic"] == pytest.approx(streamed.energy_nj["total"])
    loihi1 = profile_run(network, simulate(network, x, y, stream=True), "loihi1")
    assert loihi1.throughput["streamed"]["images_per_s"] is None and loihi1.throughput["streamed"]["energy_nj"]["static"] is None
    post_training = profile_run(convert(randomize_batchnorm(OptionAResNet()), x, mean=MEAN, std=STD),
                                simulate(convert(randomize_batchnorm(OptionAResNet()), x, mean=MEAN, std=STD), x, y,
                                         steps=40), "loihi2")
    assert post_training.throughput["streamed"] is None and post_training.throughput["one_at_a_time"] is not None


def test_cli_simulate_and_profile_streamed(data, tmp_path, capsys):
    from bsnn_lava.cli import main

    x, y = data
    _, network = _network(OptionAResNet, 2, "graded", x, integer=True)
    path = netx_export.write(network, tmp_path / "g.h5")
    np.savez(tmp_path / "test.npz", x=x, y=y)
    data_arg = ["--data", str(tmp_path / "test.npz")]
    assert main(["simulate", str(path), *data_arg, "--stream", "--batch-size", "4", "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert f"{N_IMAGES} images streamed" in out and "images per step" in out
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["n_steps"] == stream_steps(4, network.latency_steps, 1) and summary["stream"]["lanes"] == 4
    assert summary["accuracy"] is None and summary["stream"]["accuracy"] == pytest.approx(
        np.mean(np.array(summary["images"]["prediction"]) == y))
    assert all(isinstance(v, int) for row in summary["images"]["readout"] for v in row)
    assert main(["simulate", str(path), *data_arg, "--stream", "--backend", "lava", "--batch-size", "4", "--json",
                 str(tmp_path / "l.json")]) == 0
    lava = json.loads((tmp_path / "l.json").read_text())
    assert lava["images"] == summary["images"] and lava["n_spikes"] == summary["n_spikes"]
    assert main(["profile", str(path), *data_arg, "--stream", "--json", str(tmp_path / "p.json"), "--html",
                 str(tmp_path / "p.html")]) == 0
    assert "streamed:" in capsys.readouterr().out
    profile = json.loads((tmp_path / "p.json").read_text())
    assert profile["streamed"] and profile["throughput"]["streamed"]["steps_per_image"] == 2
    assert "one image at a time and streamed" in (tmp_path / "p.html").read_text()
    assert main(["simulate", str(path), *data_arg, "--stream", "--batch-size", "4", "--no-ann", "--json",
                 str(tmp_path / "n.json")]) == 0
    assert "SIN per image -" in capsys.readouterr().out
    bare = json.loads((tmp_path / "n.json").read_text())
    assert bare["ann_accuracy"] is None and bare["n_sin"] is None and bare["n_spikes"] == summary["n_spikes"]
    assert bare["images"]["prediction"] == summary["images"]["prediction"]
    assert main(["simulate", str(path), *data_arg, "--no-ann", "--backend", "lava", "--limit", "2"]) == 2
    assert "--no-ann with --backend lava" in capsys.readouterr().err
    for bad in (["--stream", "--steps", "40"], ["--stream", "--frames", "2"]):
        assert main(["simulate", str(path), *data_arg, *bad]) == 2
        assert "with --stream" in capsys.readouterr().err
    post = netx_export.write(convert(randomize_batchnorm(OptionAResNet()), x, mean=MEAN, std=STD), tmp_path / "p.h5")
    assert main(["simulate", str(post), *data_arg, "--stream"]) == 2
    assert "frame reset" in capsys.readouterr().err
    assert not (tmp_path / "never.json").exists()
