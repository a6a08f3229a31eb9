"""Whether this process is one rank of a ``torch.distributed`` job (e.g. launched by torchrun)."""
from __future__ import annotations

import torch.distributed as dist


def is_distributed() -> bool:
    """A process group is initialised: DDP wrapping, synced masks, sharded data apply."""
    return dist.is_available() and dist.is_initialized()


def is_rank0() -> bool:
    """The process that writes files and prints: rank 0, or the only process."""
    return not is_distributed() or dist.get_rank() == 0
