"""AC/DC: alternating compressed / decompressed training (Peste et al., NeurIPS 2021), on units and cost.

The mask phase is cut into intervals of ``interval`` steps, counted back from its end so the last
one is sparse, then dense, sparse, ... (a short leftover at the start joins the first interval)::

    mask_steps=12, interval=2:   D D S S D D S S D D S S      (S: sparse, D: dense)

Entering a sparse interval picks the magnitude top-k keep-set under the budget (``select_keep``,
the true cost model) and holds it with ``apply_masks`` after every step, so the model computes
what the pruned model computes. Entering a dense interval revives the pruned units. Block and N:M
units (single weights) restart from zero, as in the paper. Channel units resume from their values
before the sparse interval: a channel spans producer rows, biases, norm parameters and the
consumers' input columns, and restarting it from zero is degenerate (all of them zero is a
stationary point; with only the producer rows zero, the normalisation divides a zero-variance
output by sqrt(eps) and the first gradient blows up: on digits-cnn it took the test accuracy
from 0.99 to 0.94). ``finalize()`` selects by magnitude under the budget, after the final sparse interval.

    pruner = AcdcPruner(model, (x,), "generic-4tops", "latency=60%", mask_steps=600)   # interval 100
    ... loss.backward(); opt.step(); pruner.step() ...
    result = pruner.finalize()
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..graph import apply_masks, release_norms, unit_masks
from ..graph.masks import get_tensor
from ..graph_cost import predict
from .base import Pruner, register
from .problem import MethodConfig
from .baselines import Norm, check_steps, magnitude_scores, parse_choice
from .select import measure, nm_keep, select_keep
from ..graph.types import Structure


@dataclass(frozen=True)
class AcdcConfig(MethodConfig):
    """``interval``: steps per dense or sparse interval (default mask_steps // 6); ``norm``: l1 or l2."""

    interval: int | None = None
    norm: Norm = Norm.L2


@register("acdc", AcdcConfig)
class AcdcPruner(Pruner):
    """Alternate dense and magnitude-pruned sparse intervals; end sparse.

        >>> p = AcdcPruner(model, (x,), "generic-4tops", "memory=50%", mask_steps=12, interval=2)
        >>> for _ in range(12): train_step(); p.step()
        >>> p.state()["sparse"]
        1.0
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        c = self.config
        self.mask_steps = check_steps("mask_steps", c.steps)
        self.interval = check_steps("interval", c.interval, allow_none=True) or max(1, self.mask_steps // 6)
        self.norm = parse_choice(Norm, c.norm, "norm")
        self.steps = 0
        self.keep: torch.Tensor | None = None  # (n_units,) bool while sparse, None while dense
        self._saved: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # param -> (where, values) to restore
        self._undo = self._touched() if self.sparse_at(1) else {}  # resume must see the loaded weights
        self._enter(1)

    # -- schedule ----------------------------------------------------------------------------
    def sparse_at(self, step: int) -> bool:
        """Whether optimiser step ``step`` (1-based) trains the sparse model."""
        if step > self.mask_steps:
            return True
        first = max(self.mask_steps // self.interval - 1, 0)  # intervals count back from the end ...
        k = min((self.mask_steps - step) // self.interval, first)  # ... and the first takes any leftover steps
        return k % 2 == 0

    def _step(self) -> None:
        """After optimiser step s: prepare step s + 1 (compress, decompress, or hold the mask)."""
        self.steps += 1
        self._undo = {}
        self._enter(self.steps + 1)

    def _enter(self, step: int) -> None:
        sparse = self.sparse_at(step)
        if sparse and self.keep is None:
            self._compress()
        elif not sparse and self.keep is not None:
            self._decompress()
        if self.keep is not None:
            apply_masks(self.model, self.graph, self.keep)

    def scores(self) -> torch.Tensor:
        return magnitude_scores(self.graph, self.model, self.norm)

    # -- compress / decompress -----------------------------------------------------------------
    def _compress(self) -> None:
        """The magnitude keep-set under the budget; remember what a revival must restore."""
        scores = self.scores()
        if self.graph.structure is Structure.NM:
            self.keep = nm_keep(self.graph, scores, self.nm_layers)
        else:
            self.keep = select_keep(self.graph, scores, self.profile, self.budget, self.target)
        self._saved = self._restorable(self.keep)

    def _decompress(self) -> None:
        """Block / N:M: pruned weights restart from zero. Channel: the pruned units' entries come back."""
        apply_masks(self.model, self.graph, self.keep)  # the last sparse step may have moved them (momentum)
        with torch.no_grad():
            for name, (where, values) in self._saved.items():
                t = get_tensor(self.model, name)
                t[where.to(t.device)] = values.to(t.device, t.dtype)
        release_norms(self.model, self.graph)  # dense again: norms see every channel
        self.keep, self._saved = None, {}

    def _restorable(self, keep: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Channel graphs: param -> (the entries apply_masks is about to zero, their values)."""
        if self.graph.structure is not Structure.CHANNEL:
            return {}  # block / N:M units are single weights: they restart from zero
        out = {}
        for name, mask in unit_masks(self.graph, keep.float()).items():
            t = get_tensor(self.model, name)
            where = (mask.to(t.device) == 0).expand(t.shape)
            if where.any():
                out[name] = (where.cpu(), t.detach()[where].cpu().clone())
        return out

    def _touched(self) -> dict[str, torch.Tensor]:
        """Copies of every tensor a mask can zero."""
        names = unit_masks(self.graph, torch.ones(self.graph.num_units))
        return {name: get_tensor(self.model, name).detach().clone() for name in names}

    # -- checkpoints and logs ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out.update(steps=self.steps, acdc_keep=None if self.keep is None else self.keep.clone(),
                   acdc_saved={k: (w.clone(), v.clone()) for k, (w, v) in self._saved.items()})
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "acdc_keep" in state:
            with torch.no_grad():  # undo the compression the constructor applied for step 1
                for name, value in self._undo.items():
                    get_tensor(self.model, name).copy_(value)
            self._undo = {}
            self.steps = int(state["steps"])
            self.keep = None if state["acdc_keep"] is None else self.graph.check_keep(state["acdc_keep"])
            self._saved = dict(state.get("acdc_saved") or {})
            if self.keep is not None:
                apply_masks(self.model, self.graph, self.keep)
        super().load_state_dict(state)

    def state(self) -> dict[str, float]:
        out = super().state()
        keep = self.result.keep if self.result is not None else self.keep
        out.update(steps=self.steps, sparse=float(keep is not None),
                   sparsity=0.0 if keep is None else float((~keep).float().mean()))
        if keep is not None:
            out["predicted"] = measure(predict(self.graph, keep, self.profile), self.budget.kind)
        return out


__all__ = ["AcdcPruner"]
