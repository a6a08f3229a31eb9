import json

import pytest

from npu_compress.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_profiles_list_and_show(capsys):
    code, out, _ = run(capsys, "profiles")
    assert code == 0 and "ethos-u55-256" in out and "(default)" in out
    code, out, _ = run(capsys, "profiles", "show", "imx500-like")
    assert code == 0 and 'name = "imx500-like"' in out and "[tiling]" in out


def test_bad_profile_is_one_line_exit_2(capsys):
    code, out, err = run(capsys, "profiles", "show", "no-such-chip")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "unknown profile 'no-such-chip'" in err


def test_cost_table_and_json(capsys):
    code, out, _ = run(capsys, "cost", "--model", "resnet20", "--profile", "ethos-u55-128")
    assert code == 0 and "latency" in out and "layer3" in out
    code, out, _ = run(capsys, "cost", "--model", "digits-cnn", "--json")
    d = json.loads(out)
    assert code == 0 and d["profile"] == "generic-4tops" and d["latency_s"] > 0 and d["layers"]


def test_cost_bad_model_and_shape(capsys):
    code, _, err = run(capsys, "cost", "--model", "resnet21")
    assert code == 2 and "resnet21" in err and err.count("\n") == 1
    code, _, err = run(capsys, "cost", "--model", "digits-cnn", "--input-shape", "1,x,8")
    assert code == 2 and err.count("\n") == 1


def test_demo_prints_cost_table(capsys):
    code, out, _ = run(capsys, "demo")
    assert code == 0 and "digits-cnn" in out and "generic-4tops" in out


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("profiles", "cost", "demo"):
        assert cmd in out
