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


def test_demo_runs_the_whole_path(capsys, tmp_path):
    code, out, _ = run(capsys, "demo", "--epochs", "1,1,1", "--no-progress", "--output-dir", str(tmp_path))
    assert code == 0 and "digits-cnn" in out and "generic-4tops" in out
    assert "achieved / budget" in out and "passed" in out
    assert (tmp_path / "digits-cnn.onnx").is_file() and (tmp_path / "digits-cnn.ckpt").is_file()


def test_export_command_writes_verified_onnx_and_json(capsys, tmp_path):
    ckpt = tmp_path / "d.ckpt"
    assert run(capsys, "prune", "--model", "digits-cnn", "--data", "digits", "--budget", "memory=50%",
               "--structure", "block", "--epochs", "1,1,0", "--no-progress", "-o", str(ckpt))[0] == 0
    code, out, _ = run(capsys, "export", str(ckpt), "-o", str(tmp_path / "d.onnx"), "--json",
                       str(tmp_path / "r.json"), "--data", "digits")
    assert code == 0 and "passed" in out
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["structure"] == "block" and r["verification"]["passed"] and r["packed"]
    assert r["verification"]["samples"] == 4 + 64
    assert r["onnx_weight_bytes"] < r["onnx_dense_weight_bytes"]


def test_export_bad_checkpoint_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_text("nope")
    code, _, err = run(capsys, "export", str(bad), "-o", str(tmp_path / "x.onnx"))
    assert code == 2 and err.count("\n") == 1 and "not readable" in err
    assert not (tmp_path / "x.onnx").exists()


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("profiles", "cost", "demo"):
        assert cmd in out


def test_prune_writes_checkpoint_and_json_report(capsys, tmp_path):
    from npu_compress.checkpoint import PruneCheckpoint

    out, report = tmp_path / "d.ckpt", tmp_path / "d.json"
    code, stdout, _ = run(capsys, "prune", "--model", "digits-cnn", "--data", "digits", "--budget", "latency=60%",
                          "--epochs", "1,1,1", "--no-progress", "-o", str(out), "--json", str(report))
    assert code == 0 and "achieved / budget" in stdout
    r = json.loads(report.read_text())
    assert 0 < r["achieved_ratio"] <= 1.0 and r["pruned"]["latency_s"] < r["dense"]["latency_s"]
    ckpt = PruneCheckpoint.load(out)
    assert ckpt.model_spec == "digits-cnn" and ckpt.budget == "latency=60%" and len(ckpt.keep) == r["units"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.ckpt", "d.json"]  # no progress file left


def test_prune_infeasible_budget_fails_before_training(capsys, tmp_path):
    code, _, err = run(capsys, "prune", "--model", "digits-cnn", "--data", "digits", "--budget", "latency=5%",
                       "--no-progress", "-o", str(tmp_path / "x.ckpt"))
    assert code == 2 and "infeasible" in err and "at least" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_prune_bad_epochs_and_data(capsys, tmp_path):
    code, _, err = run(capsys, "prune", "--model", "digits-cnn", "--data", "digits", "--budget", "latency=50%",
                       "--epochs", "1,2", "-o", str(tmp_path / "x.ckpt"))
    assert code == 2 and "W,M,F" in err
    code, _, err = run(capsys, "prune", "--model", "resnet20", "--data", "digits", "--budget", "latency=50%",
                       "-o", str(tmp_path / "x.ckpt"))
    assert code == 2 and "(1, 8, 8)" in err
    assert list(tmp_path.iterdir()) == []
