"""Profile validation driven by the dataclass fields (type and ``key(...)`` metadata), and migration."""
from dataclasses import dataclass

import pytest

from npu_compress.errors import ProfileError
from npu_compress.hardware import profile as hp


@dataclass(frozen=True)
class Thermal:
    """A section a future schema might add: read by its field types, no list of key names to edit."""

    throttle_ratio: float = hp.key()
    idle_watts: float = hp.key(min=0)
    governor: str = hp.key("fixed", allowed=("fixed", "ondemand"), hint="not a known governor")
    cores: int = hp.key(1)


def test_a_new_section_is_validated_from_its_fields(monkeypatch):
    monkeypatch.setitem(hp._SECTIONS, "thermal", Thermal)
    got = hp._parse_section("chip.toml", "thermal", {"throttle_ratio": 0.75, "idle_watts": 0, "governor": "ondemand"})
    assert got == Thermal(throttle_ratio=0.75, idle_watts=0.0, governor="ondemand", cores=1)
    assert isinstance(got.idle_watts, float)
    for body, needle in [({"throttle_ratio": 0.0, "idle_watts": 1}, "'thermal.throttle_ratio' must be > 0"),
                         ({"throttle_ratio": 1, "idle_watts": -1}, "'thermal.idle_watts' must be >= 0"),
                         ({"throttle_ratio": float("inf"), "idle_watts": 1}, "must be a finite number"),
                         ({"throttle_ratio": 1, "idle_watts": 1, "cores": 1.5}, "'thermal.cores' must be an integer"),
                         ({"throttle_ratio": 1, "idle_watts": 1, "governor": "turbo"},
                          "'thermal.governor' = 'turbo' is not a known governor; allowed: fixed, ondemand"),
                         ({"idle_watts": 1}, "missing key 'thermal.throttle_ratio'"),
                         ({"throttle_ratio": 1, "idle_watts": 1, "fan": 2}, "unknown key 'thermal.fan'")]:
        with pytest.raises(ProfileError, match=needle):
            hp._parse_section("chip.toml", "thermal", body)


def test_migrate_steps_versions_up_and_names_what_it_reads():
    v1 = hp.load_profile("generic-4tops").to_dict()
    v1["schema_version"] = 1
    v1.pop("toolchain", None), v1.pop("efficiency", None)
    assert hp.migrate(1, v1)["schema_version"] == hp.SCHEMA_VERSION
    assert hp.migrate(hp.SCHEMA_VERSION, v1) is v1
    with pytest.raises(ProfileError, match=r"'schema_version' = 7; this version of npu_compress reads 2 \(and migrates 1\)"):
        hp.migrate(7, v1, "x.toml")
    assert hp.profile_from_dict(v1, "v1.toml") == hp.profile_from_dict(hp.migrate(1, v1), "v2.toml")


def test_profiles_are_built_by_keyword():
    p = hp.load_profile("ethos-u55-128")
    again = hp.HardwareProfile(**{f: getattr(p, f) for f in p.__dataclass_fields__})
    assert again == p
    with pytest.raises(TypeError):
        hp.Tiling(8, 8, (8, 8))  # keyword only: adding a key never shifts the others
