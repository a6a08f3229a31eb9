"""pyproject.toml names every package directory, so a clean install has them all."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "npu_compress").rglob("__init__.py")}
    assert on_disk | {"npu_compress.hw_profiles"} == listed


def test_one_version_string():
    from npu_compress import __version__

    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    assert "version" not in (ROOT / "pyproject.toml").read_text().split("[project]")[1].split("[")[0].replace(
        'dynamic = ["version"]', "")
