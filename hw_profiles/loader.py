"""Load and validate hardware profiles: the bundled TOML data files or a user's own.

Every quantity in a profile file is written as ``<key> = value`` inside a table, with a
mandatory ``<key>_source = "citation"`` beside it and an optional ``<key>_estimate = true``
marking a value that is not a published figure for that chip (derived, assumed or borrowed).
An optional quantity that is not known omits ``<key>`` but keeps ``<key>_source`` saying why;
it loads as ``None``. See ``loihi1.toml`` for the full layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional, Union

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ANN_FILE = "ann_45nm.toml"
#: Tables a profile may leave out (added after profiles were first written): every quantity in them
#: then loads as ``None``, its source saying that the table is missing.
OPTIONAL_TABLES = ("throughput",)


class ProfileError(ValueError):
    """A profile file is missing, unreadable or invalid; the message names the file and key."""


@dataclass(frozen=True)
class ReferenceMeasurement:
    """A published end-to-end measurement on the target (one ``[[measurement]]`` entry)."""

    workload: str
    cores_used: int
    inferences_per_s: float
    total_power_w: float
    dynamic_power_w: float
    source: str

    @property
    def total_energy_per_inference_mj(self) -> float:
        """Total (static + dynamic) energy per inference in mJ."""
        return self.total_power_w / self.inferences_per_s * 1e3

    @property
    def dynamic_energy_per_inference_mj(self) -> float:
        """Dynamic energy per inference in mJ."""
        return self.dynamic_power_w / self.inferences_per_s * 1e3


@dataclass(frozen=True)
class HardwareProfile:
    """Limits and costs of one neuromorphic target. Bit widths include the sign bit where signed.

    Weights are ``mantissa * 2**exp`` (shared exponent per connection); the membrane threshold is
    ``threshold_mant << threshold_shift`` compared against the ``state_bits``-wide voltage; the bias
    is ``mantissa << exp``. ``graded_payload_bits == 0`` means binary spikes only. Counts are per
    core or per chip as named; ``chips_per_system`` is the largest published system. Energies are
    in picojoules and ``None`` where not known. ``step_time_us``: wall time of one time step in
    microseconds; ``static_power_w``: static power of one chip in watts (what throughput costs:
    a chip draws it whether or not its neurons work).
    """

    name: str
    description: str
    weight_mantissa_bits: int
    weight_exp_min: int
    weight_exp_max: int
    state_bits: int
    threshold_mant_max: int
    threshold_shift: int
    bias_mant_bits: int
    bias_exp_min: int
    bias_exp_max: int
    graded_payload_bits: int
    max_delay_steps: int
    neurons_per_core: int
    input_axons_per_core: Optional[int]
    output_axons_per_core: Optional[int]
    synaptic_memory_bits_per_core: int
    cores_per_chip: int
    chips_per_system: Optional[int]
    synop_energy_pj: Optional[float]
    graded_synop_energy_pj: Optional[float]
    neuron_update_energy_pj: Optional[float]
    spike_energy_pj: Optional[float]
    step_time_us: Optional[float]
    static_power_w: Optional[float]
    sources: Mapping[str, str] = field(hash=False, repr=False)
    estimates: frozenset[str] = frozenset()
    measurements: tuple[ReferenceMeasurement, ...] = ()


@dataclass(frozen=True)
class AnnEnergyReference:
    """Energy per arithmetic operation of a conventional (ANN) datapath, in picojoules."""

    name: str
    description: str
    source: str
    fp32_mac_pj: float
    fp32_add_pj: float
    int8_mac_pj: float
    int8_add_pj: float
    sources: Mapping[str, str] = field(hash=False, repr=False)
    estimates: frozenset[str] = frozenset()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return _is_int(v) or isinstance(v, float)


# kind -> (check, description used in error messages)
_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "int": (_is_int, "an integer"),
    "pos_int": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "nonneg_int": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "pos_float": (lambda v: _is_num(v) and v > 0, "a positive number"),
    "str": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
}

# (dataclass field, TOML table, TOML key, kind, required)
_PROFILE_SPEC = (
    ("weight_mantissa_bits", "weight", "mantissa_bits", "pos_int", True),
    ("weight_exp_min", "weight", "exp_min", "int", True),
    ("weight_exp_max", "weight", "exp_max", "int", True),
    ("state_bits", "state", "bits", "pos_int", True),
    ("threshold_mant_max", "threshold", "mant_max", "pos_int", True),
    ("threshold_shift", "threshold", "shift", "nonneg_int", True),
    ("bias_mant_bits", "bias", "mant_bits", "pos_int", True),
    ("bias_exp_min", "bias", "exp_min", "int", True),
    ("bias_exp_max", "bias", "exp_max", "int", True),
    ("graded_payload_bits", "spike", "graded_payload_bits", "nonneg_int", True),
    ("max_delay_steps", "delay", "max_steps", "nonneg_int", True),
    ("neurons_per_core", "core", "neurons", "pos_int", True),
    ("input_axons_per_core", "core", "input_axons", "pos_int", False),
    ("output_axons_per_core", "core", "output_axons", "pos_int", False),
    ("synaptic_memory_bits_per_core", "core", "synaptic_memory_bits", "pos_int", True),
    ("cores_per_chip", "chip", "cores", "pos_int", True),
    ("chips_per_system", "system", "chips", "pos_int", False),
    ("synop_energy_pj", "energy", "synop_pj", "pos_float", False),
    ("graded_synop_energy_pj", "energy", "graded_synop_pj", "pos_float", False),
    ("neuron_update_energy_pj", "energy", "neuron_update_pj", "pos_float", False),
    ("spike_energy_pj", "energy", "spike_pj", "pos_float", False),
    ("step_time_us", "throughput", "step_time_us", "pos_float", False),
    ("static_power_w", "throughput", "static_power_w", "pos_float", False),
)
_ANN_SPEC = tuple((k, "ann", k, "pos_float", True)
                  for k in ("fp32_mac_pj", "fp32_add_pj", "int8_mac_pj", "int8_add_pj"))
_MEASUREMENT_KEYS = {"workload": "str", "cores_used": "pos_int", "inferences_per_s": "pos_float",
                     "total_power_w": "pos_float", "dynamic_power_w": "pos_float", "source": "str"}
_RANGES = (("weight_exp_min", "weight_exp_max"), ("bias_exp_min", "bias_exp_max"))
_WHERE = {f: (t, k) for f, t, k, _, _ in _PROFILE_SPEC}  # dataclass field -> (table, key)


def _check(label: str, where: str, value: Any, kind: str) -> Any:
    ok, wanted = _KINDS[kind]
    if not ok(value):
        raise ProfileError(f"{label}: {where}: expected {wanted}, got {value!r}")
    return float(value) if kind == "pos_float" else value


def _table(label: str, doc: dict, name: str, allowed: set) -> dict:
    """Return table ``name`` of ``doc`` after rejecting keys not in ``allowed``."""
    if name not in doc:
        raise ProfileError(f"{label}: [{name}]: missing table")
    table = doc[name]
    if not isinstance(table, dict):
        raise ProfileError(f"{label}: [{name}]: expected a table, got {table!r}")
    for key in table:
        if key not in allowed:
            raise ProfileError(f"{label}: [{name}] {key}: unknown key")
    return table


def _parse(label: str, doc: dict, spec: tuple, meta_keys: tuple, extra_tables: tuple = ()):
    """Validate ``doc`` against ``spec``; return (meta values, field values, sources, estimates)."""
    tables = dict.fromkeys(t for _, t, _, _, _ in spec)  # ordered, for deterministic errors
    for name in doc:
        if name not in tables and name != "meta" and name not in extra_tables:
            raise ProfileError(f"{label}: [{name}]: unknown table")
    meta_table = _table(label, doc, "meta", set(meta_keys))
    meta = {}
    for key in meta_keys:
        if key not in meta_table:
            raise ProfileError(f"{label}: [meta] {key}: missing")
        meta[key] = _check(label, f"[meta] {key}", meta_table[key], "str")
    values, sources, estimates = {}, {}, set()
    for t in tables:
        if t in OPTIONAL_TABLES and t not in doc:
            continue
        _table(label, doc, t, {k + s for _, tt, k, _, _ in spec if tt == t
                               for s in ("", "_source", "_estimate")})
    for fname, t, key, kind, required in spec:
        if t in OPTIONAL_TABLES and t not in doc:  # a profile written before the table existed
            values[fname], sources[fname] = None, f"not given: {label} has no [{t}] table"
            continue
        table = doc[t]
        if key + "_source" not in table:
            raise ProfileError(f"{label}: [{t}] {key}_source: missing "
                               "(every value must cite a source)")
        sources[fname] = _check(label, f"[{t}] {key}_source", table[key + "_source"], "str")
        if key not in table:
            if required:
                raise ProfileError(f"{label}: [{t}] {key}: missing")
            if key + "_estimate" in table:
                raise ProfileError(f"{label}: [{t}] {key}_estimate: given without a value")
            values[fname] = None
            continue
        values[fname] = _check(label, f"[{t}] {key}", table[key], kind)
        if _check(label, f"[{t}] {key}_estimate", table.get(key + "_estimate", False), "bool"):
            estimates.add(fname)
    return meta, values, MappingProxyType(sources), frozenset(estimates)


def _read(name_or_path: Union[str, Path]) -> tuple[str, dict]:
    """Return (label for messages, parsed TOML) for a bundled name or a path to a .toml file."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith(".toml") or "/" in text or "\\" in text:
        label = text
        try:
            data = Path(name_or_path).expanduser().read_bytes()
        except OSError as exc:
            raise ProfileError(f"{label}: cannot read file ({exc.strerror or exc})") from exc
    else:
        key, names = text.strip().lower(), list_profiles()
        if key not in names:
            raise ProfileError(f"{text}: unknown profile; bundled profiles are "
                               f"{', '.join(names)} (or pass a path to a .toml file)")
        label = f"{key}.toml"
        data = resources.files(__package__).joinpath(label).read_bytes()
    return label, _decode(label, data)


def _decode(label: str, data: bytes) -> dict:
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{label}: invalid TOML: {exc}") from exc


def list_profiles() -> list[str]:
    """Names of the bundled hardware profiles, sorted (e.g. ``['loihi1', 'loihi2']``)."""
    return sorted(p.name[:-5] for p in resources.files(__package__).iterdir()
                  if p.name.endswith(".toml") and p.name != ANN_FILE)


def load_profile(name_or_path: Union[str, Path]) -> HardwareProfile:
    """Load a bundled profile by name (case-insensitive) or a user's profile from a .toml path.

    Raises ProfileError (a ValueError) naming the file and the offending key.
    """
    label, doc = _read(name_or_path)
    meta, values, sources, estimates = _parse(label, doc, _PROFILE_SPEC, ("name", "description"),
                                              extra_tables=("measurement",))
    for lo, hi in _RANGES:
        if values[lo] > values[hi]:
            (t, key), hi_key = _WHERE[lo], _WHERE[hi][1]
            raise ProfileError(f"{label}: [{t}] {key}: must be <= {hi_key} "
                               f"(got {values[lo]} > {values[hi]})")
    entries = doc.get("measurement", [])
    if not isinstance(entries, list):
        raise ProfileError(f"{label}: [[measurement]]: expected an array of tables")
    measurements = []
    for i, entry in enumerate(entries, 1):
        where = f"[[measurement]] #{i}"
        if not isinstance(entry, dict):
            raise ProfileError(f"{label}: {where}: expected a table, got {entry!r}")
        for key in entry:
            if key not in _MEASUREMENT_KEYS:
                raise ProfileError(f"{label}: {where} {key}: unknown key")
        fields = {}
        for key, kind in _MEASUREMENT_KEYS.items():
            if key not in entry:
                raise ProfileError(f"{label}: {where} {key}: missing")
            fields[key] = _check(label, f"{where} {key}", entry[key], kind)
        measurements.append(ReferenceMeasurement(**fields))
    return HardwareProfile(**meta, **values, sources=sources, estimates=estimates,
                           measurements=tuple(measurements))


def load_ann_reference(path: Optional[Union[str, Path]] = None) -> AnnEnergyReference:
    """Load the ANN energy reference (bundled ``ann_45nm.toml`` unless ``path`` is given)."""
    if path is None:
        label = ANN_FILE
        doc = _decode(label, resources.files(__package__).joinpath(ANN_FILE).read_bytes())
    else:
        label, doc = _read(Path(path))
    meta, values, sources, estimates = _parse(label, doc, _ANN_SPEC,
                                              ("name", "description", "source"))
    return AnnEnergyReference(**meta, **values, sources=sources, estimates=estimates)
