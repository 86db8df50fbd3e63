"""Hardware profiles for neuromorphic targets (Loihi 1, Loihi 2) and an ANN energy reference.

Each bundled profile is a TOML data file in this package in which every value cites its source;
see ``loader.py`` for the schema and validation rules.

>>> from hw_profiles import load_profile
>>> load_profile("loihi2").state_bits
24
"""

from .loader import (
    AnnEnergyReference,
    HardwareProfile,
    ProfileError,
    ReferenceMeasurement,
    list_profiles,
    load_ann_reference,
    load_profile,
)

__all__ = [
    "AnnEnergyReference",
    "HardwareProfile",
    "ProfileError",
    "ReferenceMeasurement",
    "list_profiles",
    "load_ann_reference",
    "load_profile",
]
