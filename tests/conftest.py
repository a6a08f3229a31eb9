import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"


# One intra-op thread: the tests use tiny tensors, where thread hand-offs cost more than they
# save, and a second busy process on a 2-core runner makes multi-threaded torch stall badly.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits_small():
    """A small normalised slice of the bundled digits (256 train / 64 test), loaded once per session."""
    from npu_compress import load_dataset

    return load_dataset("digits").normalized().subset(256, 64)
