"""SMART's starting point: where the soft mask acts, what each unit is worth, and the first keep-set.

Three decisions, each made once when the pruner is built (docs/METHODS.md, "SMART's start"):

- **Where the mask acts** (:func:`norm_safe_tables`). A producer whose output goes straight into an
  affine norm (conv -> BatchNorm) is not masked; the norm's affine parameters are, so the mask scales
  the norm's *output* and the norm's running statistics keep tracking the unmasked activations.
  Masking the conv rows instead shrinks a unit's input to its norm, its running variance follows
  the mask towards 0, and a unit kept at ``finalize()`` is then amplified by ~1/f in eval mode.
- **What a unit is worth.** By default its output-side weight norm (conv rows, bias, norm affine
  parameters: the magnitude method's score). ``importance="activation"``
  (:func:`activation_importance`): the root-mean-square of the activations the mask multiplies,
  over a calibration batch of training inputs (eval mode); units the forward does not see fall back
  to their weight norm (the whole group, so a group is ranked on one scale). Measured on ResNet-20 /
  CIFAR-10 at latency=30 %, the activation-ranked starting set trained one epoch hard-pruned reached
  51.3 % where the weight-norm set reached 58.1 % (pre-ReLU RMS counts channels that ReLU zeroes),
  so activations enter through the learned mask's gradient (∂L/∂f is activation × gradient) instead.
- **The first keep-set** (:func:`starting_logits`). Log-importances standardised within each
  group (mean 0, spread 1: the temperature is in these units), then placed so that a threshold of
  0 keeps the starting set: by default the set the shared hard selection takes on importance over
  its group's mean, filled with the channels that cost (nearly) nothing more, e.g. up to a tile
  (``start="global"``, our magnitude method's allocation, which beat Torch-Pruning's uniform ratio
  on ResNet-20 / CIFAR-10 at single-channel units); or the same share of every group
  (``"uniform"``, :func:`uniform_offsets`). Learning moves units across that line from there.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..graph.types import Structure
from ..graph_cost import predict
from ..hardware.budget import measure
from .importance import output_side_tables
from .select import mandatory_keep

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
# modules whose output channels are the entries their output-side parameters index
_MEASURED = (nn.modules.conv._ConvNd, nn.Linear, nn.LayerNorm, *_NORMS)


def _module_of(name: str) -> str:
    return name.rpartition(".")[0]


@torch.no_grad()
def _forward_record(model: nn.Module, inputs: tuple, wanted: set[str]) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """One eval-mode forward of ``inputs``: (producer module -> the affine norm its output feeds
    directly, per-channel mean square of each ``wanted`` module's output)."""
    names = {m: n for n, m in model.named_modules()}
    made_by: dict[int, str] = {}
    feeds: dict[str, str] = {}
    energy: dict[str, torch.Tensor] = {}

    def hook(module: nn.Module, args: tuple, out) -> None:
        name = names[module]
        if isinstance(module, _NORMS) and getattr(module, "weight", None) is not None and args and \
                isinstance(args[0], torch.Tensor) and id(args[0]) in made_by:
            feeds.setdefault(made_by[id(args[0])], name)
        if isinstance(out, torch.Tensor):
            made_by[id(out)] = name
            if name in wanted and out.dim() >= 2 and isinstance(module, _MEASURED):
                dim = out.dim() - 1 if isinstance(module, (nn.Linear, nn.LayerNorm)) else 1
                reduce = [d for d in range(out.dim()) if d != dim]
                energy[name] = out.detach().double().pow(2).mean(dim=reduce).cpu()

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    was = model.training
    model.eval()
    try:
        model(*inputs)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return feeds, energy


def norm_safe_tables(graph, model: nn.Module, inputs: tuple) -> tuple[dict[str, list], dict[str, torch.Tensor]]:
    """The soft mask's tables, ``param -> [(dim, entry index, unit)]``, with every producer that feeds
    an affine norm left out (its norm is masked instead); and the per-channel mean square of each
    masked module's output on ``inputs`` (the activations the mask multiplies)."""
    entries = list(output_side_tables(graph, model))
    modules = {_module_of(name) for name, *_ in entries}
    feeds, energy = _forward_record(model, inputs, modules)
    masked_norms = {m for m in modules if isinstance(model.get_submodule(m), _NORMS)}
    tables: dict[str, list] = {}
    for name, dim, idx, unit in entries:
        if feeds.get(_module_of(name)) in masked_norms:
            continue  # the norm after it carries the mask
        tables.setdefault(name, []).append((dim, idx, unit))
    return tables, energy


def activation_importance(graph, model: nn.Module, tables: dict[str, list], energy: dict[str, torch.Tensor],
                          weight_norms: torch.Tensor) -> torch.Tensor:
    """(n_units,) float64: each unit's activation RMS over the channels it owns in the masked modules'
    outputs; a group with a unit the forward did not see is ranked by weight norm instead."""
    sq = torch.zeros(graph.num_units, dtype=torch.float64)
    seen = torch.zeros(graph.num_units, dtype=torch.bool)
    done: set[str] = set()
    # one parameter per module (its weight where masked, else its bias): each channel counted once
    for name in sorted(tables, key=lambda n: (_module_of(n), not n.endswith(".weight"))):
        module = _module_of(name)
        if module not in energy or module in done:
            continue
        done.add(module)
        e = energy[module]
        for dim, idx, unit in tables[name]:
            if dim is None or not len(idx) or int(idx.max()) >= len(e):
                continue
            sq.index_add_(0, unit, e[idx])
            seen[unit] = True
    groups = graph.unit_group
    blind = torch.zeros(len(graph.groups), dtype=torch.bool).index_fill_(0, groups[~seen], True)
    use_weights = blind[groups]
    return torch.where(use_weights, weight_norms.double(), sq.sqrt())


def standardized(scores: torch.Tensor, graph) -> torch.Tensor:
    """log(score) standardised within each group: mean 0, standard deviation 1 (0 for a group of one
    unit, or of equal scores)."""
    g, n_groups = graph.unit_group, len(graph.groups)
    s = scores.double()
    s = torch.log(s + 1e-6 * float(s.max()) + 1e-30)
    count = torch.bincount(g, minlength=n_groups).double()
    mean = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, g, s) / count.clamp_min(1)
    var = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, g, (s - mean[g]) ** 2) / count.clamp_min(1)
    std = var.sqrt()
    z = (s - mean[g]) / std[g].clamp_min(1e-12)
    return torch.where(std[g] > 1e-9, z, torch.zeros_like(z))


def _uniform_keep(graph, z: torch.Tensor, share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the best ``share`` of every group (at least one unit): (keep, each group's kept count)."""
    keep = torch.zeros(graph.num_units, dtype=torch.bool)
    counts = torch.zeros(len(graph.groups), dtype=torch.long)
    for gi, group in enumerate(graph.groups):
        units = torch.as_tensor(list(group))
        k = min(len(units), max(1, int(math.floor(share * len(units) + 0.5))))
        order = units[torch.argsort(z[units], descending=True, stable=True)]
        keep[order[:k]] = True
        counts[gi] = k
    return keep, counts


def uniform_offsets(graph, z: torch.Tensor, profile, budget, target: float, iters: int = 30) -> torch.Tensor:
    """(n_units,) float64: per-group shifts so that ``z + shift > 0`` keeps the same share of every
    group, the largest share whose keep-set (with the units no selection may drop) fits ``target``."""
    kind = budget.kind
    forced = mandatory_keep(graph, z)

    def fits(share: float) -> tuple[bool, torch.Tensor]:
        keep, counts = _uniform_keep(graph, z, share)
        return measure(predict(graph, keep | forced, profile), kind) <= target, counts

    lo, hi = 0.0, 1.0
    ok, best = fits(hi)
    if not ok:
        best = fits(lo)[1]
        for _ in range(iters):
            mid = (lo + hi) / 2
            ok, counts = fits(mid)
            lo, hi, best = (mid, hi, counts) if ok else (lo, mid, best)
    shift = torch.zeros(graph.num_units, dtype=torch.float64)
    for gi, group in enumerate(graph.groups):
        units = torch.as_tensor(list(group))
        ranked = torch.sort(z[units], descending=True).values
        k = int(best[gi])
        cut = float(ranked[-1]) - 1.0 if k >= len(units) else float(ranked[k - 1] + ranked[k]) / 2
        shift[units] = -cut
    return shift


def as_threshold_set(z: torch.Tensor, keep: torch.Tensor, margin: float = 0.01) -> torch.Tensor:
    """Logits ``z - θ`` that are positive exactly on ``keep``: θ puts as many units above it as ``keep``
    has, and a unit on the wrong side of it is moved just across (to ±margin, ordered by z), so the
    disagreements sit at the threshold, where the mask learns."""
    n_keep = int(keep.sum())
    ranked = torch.sort(z, descending=True).values
    if n_keep == 0:
        theta = float(ranked[0]) + margin
    elif n_keep == len(z):
        theta = float(ranked[-1]) - margin
    else:
        theta = float(ranked[n_keep - 1] + ranked[n_keep]) / 2
    m = z - theta
    span = float(z.max() - z.min()) or 1.0
    wrong_in = keep & (m <= 0)
    wrong_out = ~keep & (m > 0)
    m = torch.where(wrong_in, margin * (1 + (z - z.min()) / span), m)
    m = torch.where(wrong_out, -margin * (2 - (z - z.min()) / span), m)
    return m


def starting_logits(graph, model: nn.Module, tables: dict[str, list],
                    energy: dict[str, torch.Tensor], weight_norms: torch.Tensor, profile, budget,
                    target: float, start: str = "global", importance: str = "weight") -> torch.Tensor:
    """(n_units,) float32 logits: standardised log-importance, positive on the starting keep-set
    (channel and block; N:M graphs pick N of every M within a row, so no keep-set).

    ``start="global"``: the set the shared hard selection takes on importance over its group's mean
    (the magnitude method's allocation, with its fill of nearly free channels, e.g. up to a tile);
    ``"uniform"``: the same share of every group. ``importance="weight"``: output-side weight norms
    (as the magnitude method); ``"activation"``: activation RMS on the calibration batch."""
    use_activations = importance == "activation" and energy
    scores = activation_importance(graph, model, tables, energy, weight_norms) if use_activations else weight_norms
    z = standardized(scores, graph)
    # break exact ties (a group of two units standardises to exactly -1 and +1, so such groups tie
    # across the model): tied logits share the budget at any temperature and stay fractional
    z = z + 0.01 * (torch.rand(len(z), generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 0.5)
    if graph.structure is Structure.NM:
        return z.float()
    if start == "uniform":
        return (z + uniform_offsets(graph, z, profile, budget, target)).float()
    from .importance import normalized_by_group
    from .select import select_keep
    keep = select_keep(graph, normalized_by_group(scores.double(), graph), profile, budget, target)
    return as_threshold_set(z, keep).float()


__all__ = ["activation_importance", "norm_safe_tables", "standardized", "starting_logits", "uniform_offsets"]
