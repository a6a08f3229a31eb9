import pathlib

import pytest

from npu_compress import ProfileError, list_profiles, load_profile
from npu_compress.hardware.profile import DType, profile_dir, profile_from_dict

try:
    import tomllib
except ImportError:  # pragma: no cover
    import tomli as tomllib

REQUIRED = {"ethos-u55-128", "ethos-u55-256", "ethos-u65-512", "htp-like", "imx500-like", "generic-4tops"}


def test_required_profiles_ship():
    assert REQUIRED <= set(list_profiles())


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_profile_loads_and_round_trips(name, tmp_path):
    p = load_profile(name)
    assert p.name == name and p.schema_version == 2
    assert p.compute.macs_per_cycle > 0 and p.compute.clock_hz > 0
    assert p.tiling.tile_out > 0 and p.tiling.tile_in > 0 and len(p.tiling.block) == 2
    assert isinstance(p.compute.dtype, DType)
    again = profile_from_dict(tomllib.loads(p.to_toml()))
    assert again == p
    path = tmp_path / "copy.toml"
    path.write_text(p.to_toml())
    assert load_profile(path) == p


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_number_has_a_source_comment(name):
    for line in (profile_dir() / f"{name}.toml").read_text().splitlines():
        line = line.strip()
        if "=" in line and not line.startswith("#") and line.split("=")[0].strip() not in (
                "schema_version", "name", "description", "source", "weight_compression"):
            assert "#" in line, f"{name}: '{line}' has no source comment"


def _base():
    return tomllib.loads((profile_dir() / "generic-4tops.toml").read_text())


def _write(tmp_path: pathlib.Path, data: dict) -> pathlib.Path:
    from npu_compress.hardware.profile import _toml_value

    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for sec, body in data.items():
        if isinstance(body, dict):
            lines.append(f"[{sec}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
    path = tmp_path / "bad.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _drop(section, key):
    def f(d):
        del (d[section] if section else d)[key]
    return f


def _set(section, key, value):
    def f(d):
        (d[section] if section else d)[key] = value
    return f


MALFORMED = [
    ("missing-key", _drop("compute", "clock_hz"), "compute.clock_hz"),
    ("missing-section", _drop(None, "tiling"), "tiling"),
    ("unknown-key", _set("compute", "turbo", 3), "compute.turbo"),
    ("unknown-top-key", _set(None, "vendor", "x"), "vendor"),
    ("wrong-type", _set("compute", "macs_per_cycle", "lots"), "compute.macs_per_cycle"),
    ("float-for-int", _set("tiling", "tile_out", 8.5), "tiling.tile_out"),
    ("negative-clock", _set("compute", "clock_hz", -1.0), "compute.clock_hz"),
    ("zero-tile", _set("tiling", "tile_in", 0), "tiling.tile_in"),
    ("unknown-dtype", _set("compute", "dtype", "int4"), "compute.dtype"),
    ("bad-block", _set("tiling", "block", [16]), "tiling.block"),
    ("bad-nm", _set("sparsity", "nm", ["4:2"]), "sparsity.nm"),
    ("bool-as-int", _set("memory", "sram_bytes", True), "memory.sram_bytes"),
    ("bad-schema", _set(None, "schema_version", 99), "schema_version"),
]


@pytest.mark.parametrize("case,mutate,key", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_profile_names_file_and_key(case, mutate, key, tmp_path):
    data = _base()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    msg = str(info.value)
    assert key in msg and str(path) in msg


def test_unknown_dtype_lists_allowed(tmp_path):
    data = _base()
    data["compute"]["dtype"] = "int4"
    with pytest.raises(ProfileError, match="allowed: int8, int16, fp16, fp32"):
        load_profile(_write(tmp_path, data))


def test_not_toml_and_unknown_name(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text("name = [unclosed\n")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(bad)
    with pytest.raises(ProfileError, match="shipped profiles: .*generic-4tops"):
        load_profile("no-such-chip")
    with pytest.raises(ProfileError, match="no such profile file"):
        load_profile(tmp_path / "missing.toml")


def test_profile_is_frozen():
    p = load_profile("ethos-u55-256")
    with pytest.raises(AttributeError):
        p.compute.clock_hz = 1.0  # type: ignore[misc]


def test_toolchain_section_is_optional_and_validated(tmp_path):
    assert load_profile("generic-4tops").toolchain.vela_accelerator == ""
    u55 = load_profile("ethos-u55-128").toolchain
    assert (u55.vela_accelerator, u55.vela_system_config, u55.vela_memory_mode) == \
        ("ethos-u55-128", "Ethos_U55_High_End_Embedded", "Shared_Sram")
    data = _base()
    data["toolchain"] = {"vela_accelerator": "ethos-u99"}
    with pytest.raises(ProfileError, match="toolchain.vela_accelerator.*allowed: ethos-u55-32"):
        load_profile(_write(tmp_path, data))
    data["toolchain"] = {"vela_accelerator": "ethos-u55-64", "compiler": "x"}
    with pytest.raises(ProfileError, match="unknown key 'toolchain.compiler'"):
        load_profile(_write(tmp_path, data))


def test_version_1_files_migrate_to_the_same_costs(tmp_path):
    import torch

    from npu_compress import estimate, models

    text = (profile_dir() / "ethos-u55-128.toml").read_text()
    v1 = text.replace("schema_version = 2", "schema_version = 1")
    v1 = v1[:v1.index("[toolchain]")]  # version 1 had no [toolchain] / [efficiency]
    path = tmp_path / "ethos-u55-128.toml"
    path.write_text(v1)
    old = load_profile(path)
    assert old.schema_version == 2 and old.efficiency == load_profile("generic-4tops").efficiency
    x = torch.zeros(1, 3, 32, 32)
    model = models.create("resnet20")
    # v1 semantics are the peak-rate model; the shipped v2 profile's costs differ only by its [efficiency]
    from dataclasses import replace
    shipped = load_profile("ethos-u55-128")
    assert estimate(model, x, old).latency_s == estimate(model, x, replace(shipped, efficiency=old.efficiency,
                                                                            toolchain=old.toolchain)).latency_s
    path.write_text(v1 + "\n[efficiency]\nconv_compute_scale = 1.2\n")
    with pytest.raises(ProfileError, match="schema_version 1 profile cannot have"):
        load_profile(path)


def test_efficiency_section_is_validated_and_round_trips(tmp_path):
    data = _base()
    data["efficiency"] = {"conv_compute_scale": 1.4, "conv_elem_cycles": 0.5, "depthwise_overhead_cycles": 100}
    p = load_profile(_write(tmp_path, data))
    assert p.efficiency.of("conv").compute_scale == 1.4 and p.efficiency.of("depthwise").overhead_cycles == 100
    assert p.efficiency.of("pool").compute_scale == 1.0 and p.efficiency.of("pool").overhead_cycles is None
    import tomllib
    assert profile_from_dict(tomllib.loads(p.to_toml())) == p
    for key, value, message in (("conv_speed", 1.0, "unknown key 'efficiency.conv_speed'"),
                                ("conv_compute_scale", 0, "must be > 0"),
                                ("pool_elem_cycles", -1.0, "must be >= 0")):
        data["efficiency"] = {key: value}
        with pytest.raises(ProfileError, match=message):
            load_profile(_write(tmp_path, data))
