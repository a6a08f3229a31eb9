"""Two-process DDP (torchrun, gloo, CPU): every rank ends with the same mask, parameters and buffers
(BatchNorm running statistics averaged over ranks), and the budget holds; a diverging run stops on
every rank at once, with one line each."""
import os
import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent('''
    import sys, torch, torch.distributed as dist
    torch.set_num_threads(1)
    import npu_compress as nc
    import npu_compress.training as training
    from npu_compress.training import Epochs, TrainConfig
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    seen = []  # each sync's BatchNorm running_mean before and after, on this rank
    def recording_sync(module, sync=training.sync_buffers):
        bn = module.features[0][1]
        before = bn.running_mean.clone()
        sync(module)
        seen.append((before, bn.running_mean.clone()))
    training.sync_buffers = recording_sync
    torch.manual_seed(rank)  # a different global RNG per rank: prune() reseeds (same init everywhere); the
    # shards, BatchNorm statistics and the pruner's steps must still agree at the end
    data = nc.load_dataset("digits").subset(384, 96)
    out = nc.prune("digits-cnn", data, "generic-4tops", "latency=50%", method="smart",
                   config=TrainConfig(Epochs(1, 2, 1), progress=False, batch_size=32))
    torch.save({"keep": out.result.keep, "ratio": out.result.achieved_ratio,
                "logits": out.train.pruner.logits.detach(),
                "weight": out.model.fc.weight.detach(), "seen": seen,
                "state": {k: v.clone() for k, v in out.model.state_dict().items()}}, sys.argv[1] + f"/rank{rank}.pt")
    dist.destroy_process_group()
''')


def test_two_ranks_end_with_identical_masks(tmp_path):
    script = tmp_path / "ddp_prune.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["keep"], r1["keep"])
    assert torch.equal(r0["logits"], r1["logits"])
    assert torch.allclose(r0["weight"], r1["weight"])
    assert r0["ratio"] <= 1.0 and not bool(r0["keep"].all())
    # every parameter and buffer bit-identical across ranks (BatchNorm statistics included)
    assert r0["state"].keys() == r1["state"].keys() and any("running_var" in k for k in r0["state"])
    assert [k for k in r0["state"] if not torch.equal(r0["state"][k], r1["state"][k])] == []
    # after each epoch (4), and after the statistics are re-estimated on each rank's own batches right
    # after finalize() (1), the running statistics are the mean of the ranks' own, which differed
    assert len(r0["seen"]) == 5
    for (before0, after0), (before1, after1) in zip(r0["seen"], r1["seen"]):
        assert not torch.equal(before0, before1)  # each rank's statistics followed its own shard
        assert torch.equal(after0, after1)
        assert torch.allclose(after0, (before0 + before1) / 2, atol=1e-6)


def test_diverging_ddp_run_stops_every_rank_with_one_line(tmp_path):
    """--lr far too high under torchrun: every rank raises at the same step (no rank left waiting in a
    collective), each prints one line, and nothing is written."""
    out = tmp_path / "d.ckpt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "npu_compress.cli", "prune", "--distributed", "--model", "digits-cnn", "--data", "digits",
           "--budget", "latency=50%", "--epochs", "1,1,1", "--lr", "1e6", "--no-progress", "-o", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("npu-compress: error:")]
    assert len(lines) == 2, done.stderr[-3000:]
    assert all("training stopped" in line and "lower --lr" in line and "step" in line for line in lines)
    assert "npu_compress/" not in done.stderr.replace(str(out), "")  # no traceback from our code (torchrun has its own)
    assert list(tmp_path.iterdir()) == []
