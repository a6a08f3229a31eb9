"""Users' own data and task: a segmentation model (unet-small) pruned through the CLI with its own loss
and mIoU, from factories in files the package never saw."""
import json
import textwrap

import pytest
import torch

import npu_compress as nc
from npu_compress.cli import main
from npu_compress.task import accuracy, mean_iou

SEG_DATA = '''
import torch

def squares(n_train=96, n_test=32, seed=0):
    """3 x 32 x 32 images: one bright square per image; its pixels are class 1..3 (its colour), else 0."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    x = 0.1 * torch.randn(n, 3, 32, 32, generator=g)
    y = torch.zeros(n, 32, 32, dtype=torch.long)
    for i in range(n):
        c = int(torch.randint(1, 4, (1,), generator=g))
        r, s = (int(v) for v in torch.randint(0, 20, (2,), generator=g))
        x[i, c - 1, r:r + 12, s:s + 12] += 1.0
        y[i, r:r + 12, s:s + 12] = c
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]
'''

SEG_TASK = '''
import torch.nn.functional as F
from npu_compress import Task
from npu_compress.task import mean_iou

def segmentation():
    return Task(loss=lambda out, y: F.cross_entropy(out, y), metric=mean_iou, metric_name="mIoU")
'''


def test_mean_iou_and_accuracy_on_known_masks():
    y = torch.tensor([[0, 0, 1, 1]])
    perfect = torch.nn.functional.one_hot(y, 2).permute(0, 2, 1).float()  # (1, 2, 4) scores
    assert mean_iou(perfect, y) == 1.0 and accuracy(perfect, y) == 1.0
    half = torch.nn.functional.one_hot(torch.tensor([[0, 1, 1, 1]]), 2).permute(0, 2, 1).float()
    assert mean_iou(half, y) == pytest.approx((1 / 2 + 2 / 3) / 2) and accuracy(half, y) == 0.75


def test_unet_segmentation_prunes_through_the_cli_with_a_user_loss_and_metric(tmp_path, capsys):
    (tmp_path / "segdata.py").write_text(textwrap.dedent(SEG_DATA))
    (tmp_path / "segtask.py").write_text(textwrap.dedent(SEG_TASK))
    ckpt, report = tmp_path / "unet.ckpt", tmp_path / "r.json"
    code = main(["prune", "--model", "unet-small", "--data", f"{tmp_path / 'segdata.py'}:squares",
                 "--task", f"{tmp_path / 'segtask.py'}:segmentation", "--budget", "latency=70%",
                 "--method", "magnitude", "--epochs", "1,1,1", "--batch-size", "32", "--lr", "0.02",
                 "--no-progress", "-o", str(ckpt), "--json", str(report)])
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(report.read_text())
    assert r["metric"] == "mIoU" and 0.0 < r["accuracy"] <= 1.0 and r["achieved_ratio"] <= 1.0
    assert "mIoU" in out and "segdata.py" in r["data"]
    assert nc.export_onnx(ckpt, tmp_path / "unet.onnx", precision="fp32").verification.passed


def test_data_factory_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "bad.py").write_text("def nothing():\n    return 3\n")
    code = main(["prune", "--model", "unet-small", "--data", f"{tmp_path / 'bad.py'}:nothing", "--budget",
                 "latency=70%", "-o", str(tmp_path / "x.ckpt")])
    err = capsys.readouterr().err
    assert code == 2 and "must return a Dataset or (x_train, y_train, x_test, y_test)" in err
