"""The shared neuron arithmetic: hand-computed traces on numpy and torch, schedule, saturation."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bsnn_lava.dynamics import gated_if_step, phase, saturate, window_spike_count


def _run(xp_array, inputs, mode, window, threshold=4, v_init=2, bias=0, offset=0, state_bits=None):
    v = xp_array([v_init])
    trace = []
    for t, a in enumerate(inputs):
        integrate, fire = phase(t, mode, offset, window)
        spikes, v, lost, sat = gated_if_step(v, xp_array([a]), bias, threshold, integrate, fire, state_bits)
        trace.append((0 if spikes is None else int(spikes[0]), int(v[0]), int(lost)))
    return trace


# (spike, v after the step, lost input) per step, worked out by hand.
# bistable, P=2, theta=4, v(0)=2: steps 0-1 integrate, 2-3 fire, 4-5 integrate, 6-7 fire.
BISTABLE_INPUTS = [5, 3, 0, 0, 1, -1, 0, 0]
BISTABLE_TRACE = [(0, 7, 0), (0, 10, 0), (1, 6, 0), (1, 2, 0), (0, 3, 0), (0, 2, 0), (0, 2, 0), (0, 2, 0)]
# the same input as plain IF (integrate and fire every step)
IF_TRACE = [(1, 3, 0), (1, 2, 0), (0, 2, 0), (0, 2, 0), (0, 3, 0), (0, 2, 0), (0, 2, 0), (0, 2, 0)]


@pytest.mark.parametrize("xp_array", [lambda a: np.array(a, dtype=np.int64),
                                      lambda a: torch.tensor(a, dtype=torch.int64),
                                      lambda a: torch.tensor(a, dtype=torch.float64)])
def test_golden_traces_on_numpy_and_torch(xp_array):
    assert _run(xp_array, BISTABLE_INPUTS, "bistable", 2) == BISTABLE_TRACE
    assert _run(xp_array, BISTABLE_INPUTS, "if", 2) == IF_TRACE


def test_input_in_fire_window_is_lost_and_counted():
    trace = _run(lambda a: np.array(a), [0, 0, 7, 0], "bistable", 2, v_init=0)
    assert [lost for _, _, lost in trace] == [0, 0, 1, 0]
    assert all(v == 0 for _, v, _ in trace)


def test_sin_property_net_zero_window():
    """Excitation before inhibition within one window (phase lead): net zero. The bistable neuron
    integrates the whole window first and stays silent; the IF neuron has fired already."""
    inputs = [3, 3, -3, -3, 0, 0, 0, 0]
    bistable = _run(lambda a: np.array(a), inputs, "bistable", 4, threshold=4, v_init=0)
    plain_if = _run(lambda a: np.array(a), inputs, "if", 4, threshold=4, v_init=0)
    assert sum(s for s, _, _ in bistable) == 0
    assert sum(s for s, _, _ in plain_if) == 1


def test_phase_schedules():
    assert [phase(t, "bistable", 3, 2) for t in (2, 3, 4, 5, 6, 7)] == [
        (False, False), (True, False), (True, False), (False, True), (False, True), (True, False)]
    assert [phase(t, "if", 1, 4) for t in (0, 1, 9)] == [(False, False), (True, True), (True, True)]
    assert [phase(t, "warmup", 0, 2) for t in (0, 1, 2, 5)] == [(True, False), (True, False), (True, True),
                                                                   (True, True)]
    with pytest.raises(ValueError, match="unknown neuron mode"):
        phase(0, "lif", 0, 1)


def test_saturation_is_counted_never_silent():
    v = np.array([2 ** 23 - 1, -2 ** 23, 5])
    clipped, n = saturate(v + np.array([1, -1, 0]), 24)
    assert n == 2 and clipped.tolist() == [2 ** 23 - 1, -2 ** 23, 5]
    _, _, _, n_sat = gated_if_step(np.array([2 ** 23 - 1]), np.array([1]), 0, 10, True, False, 24)
    assert n_sat == 1


@settings(max_examples=200, deadline=None)
@given(v=st.integers(-10_000, 10_000), threshold=st.integers(1, 500), window=st.integers(1, 8))
def test_window_count_equals_repeated_fire_steps(v, threshold, window):
    state = np.array([v])
    n = 0
    for _ in range(window):
        spikes, state, _, _ = gated_if_step(state, None, 0, threshold, False, True)
        n += int(spikes[0])
    count, residual = window_spike_count(np.array([v]), threshold, window)
    assert (int(count[0]), int(residual[0])) == (n, int(state[0]))


def test_frame_starts_frame_limit_and_restart():
    """Frame reset restarts v at the first step of every integrate window; a frame limit idles the
    layer (and stops its restarts) after that many frames of 2P steps."""
    from bsnn_lava.dynamics import frame_starts

    assert [t for t in range(20) if frame_starts(t, "bistable", 3, 2)] == [3, 7, 11, 15, 19]
    assert [t for t in range(20) if frame_starts(t, "bistable", 3, 2, frames=2)] == [3, 7]
    assert not any(frame_starts(t, mode, 0, 2) for t in range(10) for mode in ("if", "warmup"))
    gates = [phase(t, "bistable", 3, 2, frames=1) for t in range(10)]
    assert gates == [(False, False)] * 3 + [(True, False)] * 2 + [(False, True)] * 2 + [(False, False)] * 3
    _, v, _, _ = gated_if_step(np.array([5.0, -2.0]), np.array([1.0, 1.0]), 0.5, 3.0, True, False,
                               restart=np.array(1.5))
    assert v.tolist() == [3.0, 3.0]  # 1.5 restart + 1 input + 0.5 bias, whatever v was
    _, v, _, _ = gated_if_step(np.array([5, -2]), None, 0, 3, False, True, restart=np.array([4, 1]))
    assert v.tolist() == [1, 1]  # restart, then fire: 4 -> spike -> 1
