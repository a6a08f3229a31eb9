"""Two-process DDP (torchrun, gloo, CPU): every rank ends with the same mask, and the budget holds."""
import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent('''
    import sys, torch, torch.distributed as dist
    torch.set_num_threads(1)
    import npu_compress as nc
    from npu_compress.training import Epochs, TrainConfig
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(rank)  # different init per rank: DDP and the pruner must still agree
    data = nc.load_dataset("digits").subset(384, 96)
    out = nc.prune("digits-cnn", data, "generic-4tops", "latency=50%", method="smart",
                   config=TrainConfig(Epochs(1, 2, 1), progress=False, batch_size=32))
    torch.save({"keep": out.result.keep, "ratio": out.result.achieved_ratio,
                "logits": out.train.pruner.logits.detach(),
                "weight": out.model.fc.weight.detach()}, sys.argv[1] + f"/rank{rank}.pt")
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
