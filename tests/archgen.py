"""Seeded random architectures for property tests of the pruning graph.

``random_arch(seed)`` returns ``(model, example_input)``: a small CNN (8-24 channels, 8x8 input)
composed of conv/bn/act, residual add, SE-style gating, concat, chunk, depthwise and grouped
convs, GroupNorm, LayerNorm / RMSNorm over channels (ConvNeXt blocks, LayerNorm2d), upsampling,
transposed conv, an attention block over the pixels, EfficientViT's cascaded group attention and
CSPNet's cross stage (split sizes held in scalar attributes), ReXNet's partial residual (a slice at
an attribute), pooling, and
one to three outputs (flatten into linear, pooled linear, raw feature map). ``unsupported=True``
also mixes in ops the analysis does not understand (roll / flip on channels).

The model is an interpreter over a list of ops, so every seed is a different graph::

    >>> model, x = random_arch(3)
    >>> [op[0] for op in model.program][:4]
    ['conv', 'dw', 'add', 'pool']
"""
from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ACTS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "hardtanh": F.hardtanh, "sigmoid": torch.sigmoid,
        "relu6": F.relu6, "hardswish": F.hardswish, "none": lambda x: x}


class Attention(nn.Module):
    """Multi-head self-attention over pixels: fused qkv, (B, N, 3, H, hd), SDPA, proj; the output
    reshaped to a width stored at construction (timm's ``attn_dim``), which surgery must update."""

    def __init__(self, dim: int, heads: int, head_dim: int, out: int):
        super().__init__()
        self.num_heads, self.head_dim = heads, head_dim
        self.attn_dim = heads * head_dim
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        b, _, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        qkv = self.qkv(t).reshape(b, h * w, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, hd)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, self.attn_dim)
        return self.proj(o).transpose(1, 2).reshape(b, -1, h, w)


class SepAttention(nn.Module):
    """Separate q / k / v projections, (B, N, H, hd) layout, residual."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = heads, head_dim
        self.q, self.k, self.v = (nn.Linear(dim, heads * head_dim) for _ in range(3))
        self.proj = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        q, k, v = (m(t).view(b, h * w, self.num_heads, self.head_dim).transpose(1, 2) for m in (self.q, self.k, self.v))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, -1)
        return x + self.proj(o).transpose(1, 2).reshape(b, c, h, w)


class Mixed(nn.ModuleDict):
    """MixNet's mixed depthwise conv: split sizes held in ``self.splits``, one kernel size per segment."""

    def __init__(self, splits=(6, 5, 5)):
        super().__init__({str(i): nn.Conv2d(c, c, k, padding=k // 2, groups=c) for i, (c, k) in
                          enumerate(zip(splits, (3, 5, 7)))})
        self.splits = list(splits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.splits, 1)
        return torch.cat([conv(p) for conv, p in zip(self.values(), parts)], 1)


class LayerNorm2d(nn.LayerNorm):
    """timm / torchvision ConvNeXt's channels-first LayerNorm: permute, layer_norm, permute back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    """ConvNeXt block on the residual stream: depthwise 3x3, a norm over channels (``ln``: channels-last
    nn.LayerNorm, ``ln2d``: LayerNorm2d before the permute, ``rms``: nn.RMSNorm), pointwise expand,
    GELU, pointwise project, layer scale, residual add."""

    def __init__(self, c: int, norm: str):
        super().__init__()
        self.first = norm == "ln2d"
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = {"ln": nn.LayerNorm, "ln2d": LayerNorm2d, "rms": nn.RMSNorm}[norm](c)
        self.pw1, self.pw2 = nn.Linear(c, 2 * c), nn.Linear(2 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x)
        y = self.norm(y).permute(0, 2, 3, 1) if self.first else self.norm(y.permute(0, 2, 3, 1))
        return x + (self.pw2(F.gelu(self.pw1(y))) * self.gamma).permute(0, 3, 1, 2)


class CascadedAttention(nn.Module):
    """EfficientViT-m's cascaded group attention: per head, a 1x1 conv makes q, k, v, split by sizes
    held in *scalar* attributes (``[key_dim, key_dim, val_dim]``); ``q^T @ k`` contracts the key
    channels, ``v @ attn^T`` carries the value channels, viewed back with ``self.val_dim``."""

    def __init__(self, dim: int, heads: int, key_dim: int, val_dim: int):
        super().__init__()
        self.num_heads, self.key_dim, self.val_dim = heads, key_dim, val_dim
        self.qkvs = nn.ModuleList(nn.Conv2d(dim // heads, 2 * key_dim + val_dim, 1) for _ in range(heads))
        self.proj = nn.Conv2d(val_dim * heads, dim, 1)

    def forward(self, x):
        b, _, h, w = x.shape
        outs = []
        for head, part in zip(self.qkvs, x.chunk(len(self.qkvs), dim=1)):
            q, k, v = head(part).split([self.key_dim, self.key_dim, self.val_dim], dim=1)
            attn = (q.flatten(2).transpose(-2, -1) @ k.flatten(2)).softmax(dim=-1)
            outs.append((v.flatten(2) @ attn.transpose(-2, -1)).view(b, self.val_dim, h, w))
        return self.proj(torch.cat(outs, 1))


class CrossStage(nn.Module):
    """CSPNet's cross stage: ``split(self.expand_chs // 2)``, the attribute holding the total."""

    def __init__(self, c: int):
        super().__init__()
        self.expand_chs = 2 * (c // 2)
        self.exp, self.blk = nn.Conv2d(c, self.expand_chs, 1), nn.Conv2d(c // 2, c // 2, 3, padding=1)

    def forward(self, x):
        xs, xb = self.exp(x).split(self.expand_chs // 2, dim=1)
        return torch.cat([xs, self.blk(xb)], 1)



class PartialResidual(nn.Module):
    """ReXNet's block end: the residual adds into the first ``self.in_channels`` channels only."""

    def __init__(self, c: int, extra: int):
        super().__init__()
        self.in_channels = c
        self.conv = nn.Conv2d(c, c + extra, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.cat([y[:, 0:self.in_channels] + x, y[:, self.in_channels:]], dim=1)

class GenNet(nn.Module):
    def __init__(self, program: list[tuple], mods: dict[str, nn.Module], outputs: list[int]):
        super().__init__()
        self.program, self.outputs = program, outputs
        self.mods = nn.ModuleDict(mods)

    def forward(self, x: torch.Tensor) -> Any:
        vals = [x]
        for op in self.program:
            vals.append(self._run(op, vals))
        outs = tuple(vals[i] for i in self.outputs)
        return outs if len(outs) > 1 else outs[0]

    def _run(self, op: tuple, v: list) -> torch.Tensor:
        kind, key, src = op[0], op[1], op[2]
        m = self.mods[key] if key in self.mods else None
        x = v[src[0]]
        if kind in ("conv", "dw", "gconv", "convT"):
            return ACTS[op[3]](m(x))
        if kind == "add":
            return x + v[src[1]]
        if kind == "gate":  # SE: x * sigmoid(fc(pool(x)))
            return x * torch.sigmoid(m(F.adaptive_avg_pool2d(x, 1)))
        if kind == "cat":
            return torch.cat([v[i] for i in src], dim=1)
        if kind == "glu":
            a, b = x.chunk(2, dim=1)
            return a * torch.sigmoid(b)
        if kind == "swap":
            a, b = torch.chunk(x, 2, 1)
            return torch.cat([b, a], 1)
        if kind == "pool":
            return F.max_pool2d(x, 2) if op[3] == "max" else F.avg_pool2d(x, 2)
        if kind == "up":
            return F.interpolate(x, scale_factor=2, mode=op[3])
        if kind in ("attn", "gn", "mix", "ln", "cnblock", "cga", "csp", "partial"):
            return m(x)
        if kind == "shuffle":  # ShuffleNet: nn.ChannelShuffle, or its view -> transpose -> reshape spelling
            if op[3] == "module":
                return m(x)
            b, c, h, w = x.shape
            return x.view(b, op[4], c // op[4], h, w).transpose(1, 2).reshape(b, c, h, w)
        if kind == "roll":
            return torch.roll(x, 1, dims=1)
        if kind == "flip":
            return x.flip(1)
        if kind == "head":  # flatten into linear
            return m(x.flatten(1))
        if kind == "gap":
            return m(x.mean((2, 3)))
        raise ValueError(kind)


def random_arch(seed: int, unsupported: bool = False) -> tuple[GenNet, torch.Tensor]:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    shapes = [(3, 8)]  # (channels, spatial size) of every value
    program: list[tuple] = []
    mods: dict[str, nn.Module] = {}

    def add(op: tuple, shape: tuple[int, int], mod: nn.Module = None) -> int:
        if mod is not None:
            mods[op[1]] = mod
        program.append(op)
        shapes.append(shape)
        return len(shapes) - 1

    def conv(src: int, cout: int, k: int = 3, act: str = None, groups: int = 1) -> int:
        cin, s = shapes[src]
        layers = [nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=rng.random() < 0.5)]
        if rng.random() < 0.7:
            layers.append(nn.BatchNorm2d(cout))
        kind = "dw" if groups == cin and groups > 1 else ("gconv" if groups > 1 else "conv")
        return add((kind, f"m{len(program)}", [src], act or rng.choice(list(ACTS))), (cout, s), nn.Sequential(*layers))

    cur = conv(0, rng.choice([8, 12, 16]))
    feats = [cur]
    for _ in range(rng.randint(3, 7)):
        c, s = shapes[cur]
        choices = ["conv", "res", "dw", "gconv", "cat", "gate", "glu", "swap", "pool", "up", "attn", "sepattn", "gn",
                   "convT", "catg", "shuffle", "mix", "ln", "cnblock", "cga", "csp", "partial"] + \
            (["roll", "flip"] if unsupported else [])
        kind = rng.choice(choices)
        if kind == "conv":
            cur = conv(cur, rng.choice([8, 12, 16, 20, 24]), k=rng.choice([1, 3]))
        elif kind == "res":
            branch = conv(cur, c, k=rng.choice([1, 3]))
            cur = add(("add", "", [cur, branch]), (c, s))
        elif kind == "dw":
            cur = conv(cur, c * rng.choice([1, 1, 2]), groups=c)
        elif kind == "gconv" and c % 4 == 0:
            cur = conv(cur, rng.choice([8, 16, 24]), groups=rng.choice([2, 4]))
        elif kind == "cat":
            other = [f for f in feats if shapes[f][1] == s]
            b = conv(rng.choice(other), rng.choice([4, 8]), k=1)
            cur = add(("cat", "", [cur, b]), (c + shapes[b][0], s))
        elif kind == "catg":  # a narrow branch concatenated, then a grouped conv: groups straddle producers
            b = conv(cur, rng.choice([1, 2, 3]), k=1)
            groups = rng.choice([2, 4])
            mid = add(("cat", "", [cur, b]), (c + shapes[b][0], s))
            if (c + shapes[b][0]) % groups == 0:
                cur = conv(mid, groups * rng.choice([2, 4]), groups=groups)
            else:
                cur = mid
        elif kind == "shuffle" and c % 2 == 0:
            g = 4 if c % 4 == 0 and rng.random() < 0.5 else 2
            spelling = rng.choice(["module", "view"])
            cur = add(("shuffle", f"m{len(program)}", [cur], spelling, g), (c, s),
                      nn.ChannelShuffle(g) if spelling == "module" else None)
        elif kind == "mix" and c >= 3:
            third = c // 3
            cur = add(("mix", f"m{len(program)}", [cur]), (c, s), Mixed((c - 2 * third, third, third)))
        elif kind == "gate":
            cur = add(("gate", f"m{len(program)}", [cur]), (c, s), nn.Conv2d(c, c, 1))
        elif kind in ("glu", "swap") and c % 2 == 0:
            cur = add((kind, "", [cur]), (c // 2 if kind == "glu" else c, s))
        elif kind == "pool" and s >= 4:
            cur = add(("pool", "", [cur], rng.choice(["max", "avg"])), (c, s // 2))
        elif kind == "up" and s <= 8:
            cur = add(("up", "", [cur], rng.choice(["nearest", "bilinear"])), (c, s * 2))
        elif kind == "attn":
            heads, hd = rng.choice([2, 3, 4]), rng.choice([2, 4])
            out = rng.choice([c, 8, 16])
            cur = add(("attn", f"m{len(program)}", [cur]), (out, s), Attention(c, heads, hd, out))
        elif kind == "sepattn":
            cur = add(("attn", f"m{len(program)}", [cur]), (c, s), SepAttention(c, rng.choice([2, 4]), 2))
        elif kind == "gn" and c % 4 == 0:
            cur = add(("gn", f"m{len(program)}", [cur]), (c, s), nn.GroupNorm(rng.choice([2, 4]), c))
        elif kind == "ln":  # a norm over the stream's channels (ConvNeXt's stem / downsample norm)
            cur = add(("ln", f"m{len(program)}", [cur]), (c, s), LayerNorm2d(c))
        elif kind == "cnblock":
            cur = add(("cnblock", f"m{len(program)}", [cur]), (c, s), CNBlock(c, rng.choice(["ln", "ln2d", "rms"])))
        elif kind == "cga" and c % 2 == 0:  # EfficientViT's cascaded group attention (sizes in scalar attributes)
            kd = rng.choice([2, 4])
            cur = add(("cga", f"m{len(program)}", [cur]), (c, s), CascadedAttention(c, 2, kd, rng.choice([kd, 3, 6])))
        elif kind == "csp" and c >= 2:  # CSPNet's split(self.expand_chs // 2)
            cur = add(("csp", f"m{len(program)}", [cur]), (2 * (c // 2), s), CrossStage(c))
        elif kind == "partial":  # ReXNet's residual into the first in_channels channels (a slice at an attribute)
            extra = rng.choice([2, 4, 8])
            cur = add(("partial", f"m{len(program)}", [cur]), (c + extra, s), PartialResidual(c, extra))
        elif kind == "convT" and s <= 8:
            cur = add(("convT", f"m{len(program)}", [cur], "relu"), (8, s * 2), nn.ConvTranspose2d(c, 8, 2, 2))
        elif kind in ("roll", "flip"):
            cur = add((kind, "", [cur]), (c, s))
        feats.append(cur)
    outputs = []
    for _ in range(rng.randint(1, 3)):
        c, s = shapes[cur]
        kind = rng.choice(["head", "gap", "raw"])
        if kind == "head":
            outputs.append(add(("head", f"m{len(program)}", [cur]), (5, 1), nn.Linear(c * s * s, 5)))
        elif kind == "gap":
            outputs.append(add(("gap", f"m{len(program)}", [cur]), (5, 1), nn.Linear(c, 5)))
        else:
            outputs.append(cur)
        cur = rng.choice(feats)
    model = GenNet(program, mods, sorted(set(outputs)))
    _randomize_norms(model)
    return model.eval(), torch.randn(2, 3, 8, 8)


def _randomize_norms(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so a wrongly kept or dropped entry shows in the output."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
                m.weight.uniform_(0.5, 1.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.uniform_(-0.5, 0.5)


# -- helpers shared by the graph tests --------------------------------------------------------
def random_keep(graph, frac_pruned: float, gen: torch.Generator) -> torch.Tensor:
    """Prune about ``frac_pruned`` of the units at random, keeping at least one unit per group."""
    keep = torch.rand(graph.num_units, generator=gen) >= frac_pruned
    for g in graph.groups:
        if len(g) and not keep[g.start:g.stop].any():
            keep[g.start + int(torch.randint(len(g), (1,), generator=gen))] = True
    for c in graph.covers:  # and every producer a channel
        if not keep[c].any():
            keep[c[int(torch.randint(len(c), (1,), generator=gen))]] = True
    return keep


def expected_param_count(model: nn.Module, graph, keep: torch.Tensor) -> int:
    """Parameter count after removal, computed from the units' slices alone."""
    removed: dict[tuple[str, int], set] = {}
    for u in graph.units:
        if not keep[u.index]:
            for s in u.slices:
                removed.setdefault((s.param, s.dim), set()).update(s.indices().tolist())
    total = 0
    for name, p in model.named_parameters():
        n = 1
        for d, size in enumerate(p.shape):
            n *= size - len(removed.get((name, d), ()))
        total += n
    return total


def max_err(a, b) -> float:
    """Largest abs difference over (nested) outputs, relative for outputs larger than 1."""
    from torch.utils._pytree import tree_flatten
    fa, fb = [t.detach() for t in tree_flatten(a)[0]], [t.detach() for t in tree_flatten(b)[0]]
    assert [t.shape for t in fa] == [t.shape for t in fb]
    return max(float((x - y).abs().max() / max(1.0, float(x.abs().max()))) for x, y in zip(fa, fb))
