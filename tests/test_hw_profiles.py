"""Tests for hw_profiles: bundled Loihi profiles, user profiles by path, and validation errors."""

import dataclasses
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from hw_profiles import (
    AnnEnergyReference,
    HardwareProfile,
    ProfileError,
    list_profiles,
    load_ann_reference,
    load_profile,
)

NON_QUANTITY_FIELDS = {"name", "description", "sources", "estimates", "measurements"}
QUANTITY_FIELDS = {f.name for f in dataclasses.fields(HardwareProfile)} - NON_QUANTITY_FIELDS
LOIHI1_TEXT = resources.files("hw_profiles").joinpath("loihi1.toml").read_text("utf-8")


def _write(tmp_path: Path, text: str, name: str = "my.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _mutate(old: str, new: str) -> str:
    assert LOIHI1_TEXT.count(old) == 1, f"test fixture text not unique: {old!r}"
    return LOIHI1_TEXT.replace(old, new)


# ---------------------------------------------------------------- bundled profiles

def test_list_profiles_names_bundled_targets_only():
    assert list_profiles() == ["loihi1", "loihi2"]


def test_loihi1_documented_values():
    p = load_profile("loihi1")
    assert (p.weight_mantissa_bits, p.weight_exp_min, p.weight_exp_max) == (8, -8, 7)
    assert p.state_bits == 24
    assert (p.threshold_mant_max, p.threshold_shift) == (131071, 6)
    assert (p.bias_mant_bits, p.bias_exp_min, p.bias_exp_max) == (13, 0, 7)
    assert p.graded_payload_bits == 0  # binary spikes only
    assert p.max_delay_steps == 62 and "max_delay_steps" in p.estimates
    assert p.neurons_per_core == 1024
    assert p.input_axons_per_core == 4096 and p.output_axons_per_core == 4096
    assert p.synaptic_memory_bits_per_core == 1_048_576
    assert p.cores_per_chip == 128 and p.chips_per_system == 768
    assert p.synop_energy_pj == pytest.approx(23.6)
    assert p.neuron_update_energy_pj == pytest.approx(81.0)
    assert p.spike_energy_pj == pytest.approx(1.7)
    assert not {"synop_energy_pj", "neurons_per_core", "state_bits"} & p.estimates
    assert p.measurements == ()


def test_loihi2_documented_values():
    p = load_profile("loihi2")
    assert p.state_bits == 24
    assert p.weight_mantissa_bits == 8
    assert p.graded_payload_bits == 24
    assert p.max_delay_steps == 62 and "max_delay_steps" not in p.estimates
    assert p.neurons_per_core == 8192 and "neurons_per_core" in p.estimates
    assert p.synaptic_memory_bits_per_core == 120_000_000 // 128 * 8
    assert "synaptic_memory_bits_per_core" in p.estimates
    assert p.input_axons_per_core is None and p.output_axons_per_core is None
    assert "Not published" in p.sources["input_axons_per_core"]
    assert p.cores_per_chip == 128 and p.chips_per_system == 1152
    # Per-op energies are Loihi 1 figures borrowed as estimates.
    for f in ("synop_energy_pj", "neuron_update_energy_pj", "spike_energy_pj"):
        assert f in p.estimates and "Loihi 1" in p.sources[f]
    (m,) = p.measurements
    assert (m.cores_used, m.inferences_per_s) == (74, pytest.approx(408.9))
    assert m.total_energy_per_inference_mj == pytest.approx(1.66, abs=0.01)
    assert m.dynamic_energy_per_inference_mj == pytest.approx(1.093, abs=0.001)


@pytest.mark.parametrize("name", ["loihi1", "loihi2"])
def test_every_quantity_has_a_source(name):
    p = load_profile(name)
    assert set(p.sources) == QUANTITY_FIELDS
    assert all(isinstance(s, str) and len(s) > 10 for s in p.sources.values())
    assert p.estimates <= QUANTITY_FIELDS
    assert p.name == name


def test_name_lookup_is_case_insensitive_and_profiles_are_frozen():
    p = load_profile("LoIhI2")
    assert p == load_profile("loihi2")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.state_bits = 32
    with pytest.raises(TypeError):
        p.sources["state_bits"] = "x"


def test_ann_reference_values():
    ref = load_ann_reference()
    assert isinstance(ref, AnnEnergyReference)
    assert (ref.fp32_mac_pj, ref.fp32_add_pj) == (pytest.approx(4.6), pytest.approx(0.9))
    assert (ref.int8_mac_pj, ref.int8_add_pj) == (pytest.approx(0.23), pytest.approx(0.03))
    assert "Horowitz" in ref.source and "2014" in ref.source
    assert set(ref.sources) == {"fp32_mac_pj", "fp32_add_pj", "int8_mac_pj", "int8_add_pj"}


# ---------------------------------------------------------------- user profiles

def test_user_profile_loads_by_path(tmp_path):
    text = _mutate("neurons = 1024\n", "neurons = 2048\n")
    text = text.replace('name = "loihi1"', 'name = "my-chip"')
    path = _write(tmp_path, text)
    for arg in (path, str(path)):
        p = load_profile(arg)
        assert p.name == "my-chip" and p.neurons_per_core == 2048


def test_optional_quantity_may_be_absent_with_a_source(tmp_path):
    text = _mutate("spike_pj = 1.7\n", "").replace("chips = 768\n", "")
    p = load_profile(_write(tmp_path, text))
    assert p.spike_energy_pj is None and p.chips_per_system is None
    assert "Davies" in p.sources["spike_energy_pj"]


def test_throughput_figures_are_cited_and_an_older_profile_without_them_still_loads(tmp_path):
    loihi2 = load_profile("loihi2")
    assert loihi2.step_time_us == pytest.approx(1e6 / (408.91 * 16), rel=1e-3)  # PilotNet: 16 steps per inference
    assert loihi2.static_power_w == pytest.approx(0.232) and {"step_time_us", "static_power_w"} <= loihi2.estimates
    assert "PilotNet" in loihi2.sources["step_time_us"] and "static" in loihi2.sources["static_power_w"]
    assert load_profile("loihi1").step_time_us is None
    start = LOIHI1_TEXT.index("[throughput]")
    older = load_profile(_write(tmp_path, LOIHI1_TEXT[:start]))  # written before the table existed
    assert older.step_time_us is None and older.static_power_w is None
    assert "no [throughput] table" in older.sources["static_power_w"]
    with pytest.raises(ProfileError, match="static_power_w: expected a positive number"):
        load_profile(_write(tmp_path, LOIHI1_TEXT.replace("[throughput]\n", "[throughput]\nstatic_power_w = -1\n"),
                            "bad.toml"))


def test_integer_accepted_for_energy(tmp_path):
    p = load_profile(_write(tmp_path, _mutate("neuron_update_pj = 81.0", "neuron_update_pj = 81")))
    assert isinstance(p.neuron_update_energy_pj, float) and p.neuron_update_energy_pj == 81.0


def test_user_ann_reference_by_path(tmp_path):
    text = resources.files("hw_profiles").joinpath("ann_45nm.toml").read_text("utf-8")
    path = _write(tmp_path, text.replace("int8_add_pj = 0.03", "int8_add_pj = 0.05"), "ann.toml")
    assert load_ann_reference(path).int8_add_pj == pytest.approx(0.05)
    with pytest.raises(ProfileError, match=r"ann\.toml: \[ann\] int8_add_pj: expected a positive"):
        bad = text.replace("int8_add_pj = 0.03", "int8_add_pj = -1")
        load_ann_reference(_write(tmp_path, bad, "ann.toml"))


# ---------------------------------------------------------------- malformed files

MALFORMED = {
    "missing key": (("neurons = 1024\n", ""), "[core] neurons: missing"),
    "wrong type (string)": (("mantissa_bits = 8", 'mantissa_bits = "8"'),
                            "[weight] mantissa_bits: expected a positive integer"),
    "float for int": (("\nbits = 24\n", "\nbits = 24.0\n"),
                      "[state] bits: expected a positive integer"),
    "bool for int": (("cores = 128\n", "cores = true\n"),
                     "[chip] cores: expected a positive integer, got True"),
    "negative count": (("mantissa_bits = 8", "mantissa_bits = -3"),
                       "[weight] mantissa_bits: expected a positive integer, got -3"),
    "zero energy": (("spike_pj = 1.7", "spike_pj = 0.0"),
                    "[energy] spike_pj: expected a positive number"),
    "exp min > max": (("exp_min = 0\n", "exp_min = 9\n"),
                      "[bias] exp_min: must be <= exp_max (got 9 > 7)"),
    "unknown key": (("[chip]\n", '[chip]\ncolour = "blue"\n'), "[chip] colour: unknown key"),
    "unknown table": (("[chip]\n", "[bogus]\nx = 1\n\n[chip]\n"), "[bogus]: unknown table"),
    "array instead of table": (("[delay]\n", "[[delay]]\n"), "[delay]: expected a table"),
    "misspelled source key": (('synop_pj_source = "Davies', 'synop_pjsource = "Davies'),
                       "[energy] synop_pjsource: unknown key"),
    "missing meta": (('name = "loihi1"\n', ""), "[meta] name: missing"),
    "bad estimate flag": (("max_steps_estimate = true", 'max_steps_estimate = "yes"'),
                          "[delay] max_steps_estimate: expected true or false"),
    "bad TOML": (("[weight]\n", "[weight\n"), "invalid TOML"),
    "bad measurement": (("[energy]\n", "[[measurement]]\nworkload = \"x\"\ncores_used = 0\n"
                         "inferences_per_s = 1.0\ntotal_power_w = 1.0\ndynamic_power_w = 0.5\n"
                         "source = \"s\"\n\n[energy]\n"),
                        "[[measurement]] #1 cores_used: expected a positive integer, got 0"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_profile_raises_profile_error(tmp_path, case):
    (old, new), expected = MALFORMED[case]
    path = _write(tmp_path, _mutate(old, new), "broken_profile.toml")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    msg = str(info.value)
    assert "broken_profile.toml" in msg
    assert expected in msg
    assert isinstance(info.value, ValueError)


def test_missing_source_line_is_rejected(tmp_path):
    lines = [ln for ln in LOIHI1_TEXT.splitlines(True) if not ln.startswith("synop_pj_source")]
    with pytest.raises(ProfileError, match=r"nosrc\.toml: \[energy\] synop_pj_source: missing"):
        load_profile(_write(tmp_path, "".join(lines), "nosrc.toml"))


def test_missing_source_for_absent_optional_value_is_rejected(tmp_path):
    lines = [ln for ln in LOIHI1_TEXT.splitlines(True) if not ln.startswith("chips")]
    with pytest.raises(ProfileError, match=r"nosys\.toml: \[system\] chips_source: missing"):
        load_profile(_write(tmp_path, "".join(lines), "nosys.toml"))


def test_nonexistent_path(tmp_path):
    missing = tmp_path / "does_not_exist.toml"
    with pytest.raises(ProfileError, match=r"does_not_exist\.toml: cannot read file"):
        load_profile(missing)


def test_unknown_bundled_name():
    with pytest.raises(ProfileError,
                       match=r"loihi3: unknown profile; bundled profiles are loihi1, loihi2"):
        load_profile("loihi3")


@settings(max_examples=30, deadline=None)
@given(lo=st.integers(-20, 20), hi=st.integers(-20, 20))
def test_weight_exponent_range_is_checked(tmp_path_factory, lo, hi):
    text = _mutate("exp_min = -8\n", f"exp_min = {lo}\n")
    text = text.replace("exp_max = 7\n", f"exp_max = {hi}\n", 1)  # first: [weight]
    path = _write(tmp_path_factory.mktemp("exp"), text)
    if lo <= hi:
        p = load_profile(path)
        assert (p.weight_exp_min, p.weight_exp_max) == (lo, hi)
    else:
        with pytest.raises(ProfileError, match=r"my\.toml: \[weight\] exp_min: must be <= exp_max"):
            load_profile(path)
