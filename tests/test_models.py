"""The model zoo: shapes, sizes, torch.export, and the structure later passes rely on."""

import dataclasses

import pytest
import torch
from torch import nn

from npu_compress import models
from npu_compress.errors import ModelSpecError
from npu_compress.models.vit import Attention, Mlp

# name -> (output shape for batch 1, parameter count range)
EXPECTED = {
    "digits-cnn": ((1, 10), (200_000, 300_000)),
    "resnet20": ((1, 10), (260_000, 290_000)),
    "resnet56": ((1, 10), (840_000, 870_000)),
    "mobilenetv2": ((1, 10), (2_200_000, 2_300_000)),
    "vgg11": ((1, 10), (9_200_000, 9_300_000)),
    "vgg16": ((1, 10), (14_700_000, 14_800_000)),
    "vit-tiny": ((1, 10), (2_600_000, 2_800_000)),
    "unet-small": ((1, 4, 32, 32), (450_000, 520_000)),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Batch-1 CPU runs are no slower on one thread, and not slowed by a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_zoo_names_are_the_documented_set():
    assert models.names() == list(EXPECTED)
    for name, entry in models.ZOO.items():
        assert entry.name == name
        assert entry.input_shape[0] == 1
        assert entry.task == ("segmentation" if name == "unet-small" else "classification")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_forward_shape_params_and_export(name):
    torch.manual_seed(0)
    net = models.create(name).eval()
    x = models.example_input(name)
    out_shape, (low, high) = EXPECTED[name]
    with torch.no_grad():
        y = net(x)
    assert tuple(y.shape) == out_shape
    assert y.shape[1] == models.ZOO[name].num_classes
    assert low <= n_params(net) <= high
    program = torch.export.export(net, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["digits-cnn", "resnet20", "mobilenetv2", "unet-small"])
def test_eval_mode_batchnorm_is_per_sample(name):
    """In eval mode BN uses running stats: a sample's output does not depend on its batch."""
    net = models.create(name).eval()
    x = models.example_input(name, batch=3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(net(x)[1:2], net(x[1:2]), atol=1e-5, rtol=1e-5)


def test_create_passes_num_classes_and_rejects_unknown():
    assert models.create("resnet20", num_classes=100)(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    with pytest.raises(ModelSpecError, match="resnet18.*resnet20.*vit-tiny"):
        models.create("resnet18")
    with pytest.raises(ModelSpecError, match="resnet20.*width"):
        models.create("resnet20", width=2)


def test_example_input_shape_batch_and_seed():
    assert models.example_input("vgg11", batch=4).shape == (4, 3, 32, 32)
    assert models.example_input("digits-cnn").shape == (1, 1, 8, 8)
    a = models.example_input("resnet20", generator=torch.Generator().manual_seed(3))
    b = models.example_input("resnet20", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ModelSpecError):
        models.example_input("nope")
    with pytest.raises(ModelSpecError):
        models.example_input("resnet20", batch=0)


def test_zoo_entry_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        models.ZOO["resnet20"].num_classes = 5  # type: ignore[misc]


def test_resnet_shortcuts_are_projections_and_depth():
    for name, n_blocks in (("resnet20", 9), ("resnet56", 27)):
        net = models.create(name)
        convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
        projections = [c for c in convs if c.kernel_size == (1, 1)]
        assert len(convs) == 1 + 2 * n_blocks + 2  # stem, two per block, two projections
        assert [(p.in_channels, p.out_channels, p.stride) for p in projections] == [
            (16, 32, (2, 2)), (32, 64, (2, 2))]


def test_mobilenetv2_depthwise_and_strides():
    net = models.create("mobilenetv2").eval()
    depthwise = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert sum(m.stride == (2, 2) for m in net.modules() if isinstance(m, nn.Conv2d)) == 2
    assert net.features(torch.randn(1, 3, 32, 32)).shape == (1, 1280, 8, 8)


def test_vgg_features_end_at_one_pixel():
    for name, n_convs in (("vgg11", 8), ("vgg16", 13)):
        net = models.create(name).eval()
        assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == n_convs
        assert net.features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 1, 1)
        assert net.classifier.in_features == 512


def test_vit_attention_attributes():
    net = models.create("vit-tiny")
    attns = [m for m in net.modules() if isinstance(m, Attention)]
    mlps = [m for m in net.modules() if isinstance(m, Mlp)]
    assert len(attns) == len(mlps) == 6
    for attn in attns:
        assert (attn.num_heads, attn.head_dim) == (3, 64)
        assert (attn.qkv.in_features, attn.qkv.out_features) == (192, 3 * 3 * 64)
        assert (attn.proj.in_features, attn.proj.out_features) == (192, 192)
    assert (mlps[0].fc1.out_features, mlps[0].fc2.in_features) == (768, 768)
    assert net.patch_embed.kernel_size == net.patch_embed.stride == (4, 4)
    assert net.pos_embed.shape == (1, 65, 192)


def remove_head(attn: Attention, head: int) -> None:
    """Physically drop one head: slice q/k/v rows and proj columns, update num_heads."""
    keep = [h for h in range(attn.num_heads) if h != head]
    rows = torch.arange(3 * attn.num_heads * attn.head_dim).reshape(3, attn.num_heads, -1)
    rows = rows[:, keep].flatten()
    cols = torch.arange(attn.num_heads * attn.head_dim).reshape(attn.num_heads, -1)[keep]
    cols = cols.flatten()
    qkv = nn.Linear(attn.qkv.in_features, len(rows))
    qkv.weight.data, qkv.bias.data = attn.qkv.weight[rows].clone(), attn.qkv.bias[rows].clone()
    proj = nn.Linear(len(cols), attn.proj.out_features)
    proj.weight.data, proj.bias.data = attn.proj.weight[:, cols].clone(), attn.proj.bias.clone()
    attn.qkv, attn.proj, attn.num_heads = qkv, proj, attn.num_heads - 1


def test_vit_head_removal_only_needs_attributes_and_slices():
    torch.manual_seed(0)
    attn = Attention(dim=32, num_heads=3, head_dim=8).eval()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        attn.proj.weight[:, 8:16] = 0  # head 1 contributes nothing
        expected = attn(x)
        remove_head(attn, 1)
        torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)
    assert attn.num_heads == 2


def test_unet_output_keeps_spatial_size():
    net = models.create("unet-small").eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 4, 32, 32)
        assert net(torch.randn(1, 3, 64, 48)).shape == (1, 4, 64, 48)
    assert net.enc1.conv[0].out_channels == 16
    assert net.up1.conv.conv[0].in_channels == 32 + 16  # upsampled + skip, concatenated
