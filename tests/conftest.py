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


@pytest.fixture(scope="session")
def spiked_digits():
    """A trained digits-cnn with the same function in float but hostile to int8: channel 0 of the first
    block's BatchNorm scaled up 1e4 and its consumer's input weights down 1e4 (ReLU commutes with a
    positive scale). The per-tensor int8 activation range then belongs to that one channel and every
    other channel rounds to 0, so no honest int8 gate can pass it."""
    import npu_compress as nc
    from npu_compress.training import Epochs, TrainConfig

    torch.manual_seed(0)
    model = nc.models.create("digits-cnn")
    nc.train(model, nc.load_dataset("digits").normalized(), TrainConfig(Epochs(0, 0, 2), progress=False))
    bn, consumer = model.features[0][1], model.features[1][0]
    with torch.no_grad():
        bn.weight[0] *= 1e4
        bn.bias[0] *= 1e4
        consumer.weight[:, 0] /= 1e4
    return model.eval()
