"""Channel rules: how an op moves channels, registered by op name or by module type.

The channel analysis walks the exported graph op by op. Each op's rule reads where its inputs'
channels are (an :class:`Info`: the tracked dims and one element id per position) and returns
where its output's are; anything no rule understands freezes the channels it touches. A rule for an
op the analysis does not know, or for every op inside a module type of yours, is one function::

    from npu_compress.graph import Info, register_channel_rule

    def my_shift(walk, node):                       # torch.ops.mylib.shift(x, k): a channel roll
        x = walk.val(node.args[0])                  # Info, ParamRef or None (untracked)
        if not isinstance(x, Info) or x.dims != (1,):
            return walk.unknown(node)               # freeze what it touches
        walk.tie(x.ids)                             # all channels one class: prune none, or all
        return Info((1,), numpy.roll(x.ids, node.args[1]))

    register_channel_rule("shift", my_shift)        # op name: aten.shift -> "shift"
    register_channel_rule(MyBlock, rule)            # every op run inside a MyBlock

A module-type rule sees every node its modules run (innermost registered type first) and returns
``NotImplemented`` to leave a node to the op's own rule. What a rule may call on ``walk``:

- ``walk.val(node_or_arg)``: the Info / ParamRef / None of a graph value; ``walk.shape(...)``: its shape;
- ``walk.tie(ids)``: the given elements become one class (removed together);
- ``walk.freeze(obj, node, reason)``: never prune these channels (the report shows ``reason``);
- ``walk.unknown(node)``: freeze every input of ``node`` as not understood;
- ``walk.new_channels(n, node)``: ``n`` fresh element ids produced by ``node`` (a new producer);
- ``walk.module_of(node)``: ``(path, module)`` that ran ``node``;
- ``walk.update_attribute(path, attr, ids)``: after pruning, set ``module.attr`` (or a list entry,
  ``"splits[1]"``) to the number of kept channels among ``ids``;
- ``walk.keep_one(ids)``: at least one of these channels must stay.

Rules must be exact: a model pruned under them must equal the masked model (the property tests in
``tests/test_graph_property.py`` check the built-in rules that way). The channel shuffle below is
written against this API only.
"""
from __future__ import annotations

from typing import Any, Callable, Union

import numpy as np
from torch import fx, nn

from .tensor_info import Info, ParamRef

ChannelRule = Callable[[Any, fx.Node], Any]

_OP_RULES: dict[str, ChannelRule] = {}
_MODULE_RULES: dict[type, ChannelRule] = {}


def register_channel_rule(target: Union[str, type], rule: ChannelRule) -> None:
    """Use ``rule(walk, node)`` for op ``target`` (its base name: ``"channel_shuffle"`` for
    ``aten.channel_shuffle.default``) or for every op run inside modules of type ``target``.
    A later registration for the same target replaces the earlier one."""
    if not callable(rule):
        raise TypeError(f"register_channel_rule: rule must be callable (walk, node) -> Info, got {rule!r}")
    if isinstance(target, str):
        if not target or "." in target:
            raise ValueError(f"register_channel_rule: op name {target!r} must be a base name such as "
                             "'channel_shuffle' (not 'aten.channel_shuffle.default')")
        _OP_RULES[target] = rule
    elif isinstance(target, type) and issubclass(target, nn.Module):
        _MODULE_RULES[target] = rule
    else:
        raise TypeError(f"register_channel_rule: target must be an op name or an nn.Module subclass, "
                        f"got {target!r}")


def unregister_channel_rule(target: Union[str, type]) -> None:
    """Remove a registered rule (built-in op handling applies again)."""
    (_OP_RULES if isinstance(target, str) else _MODULE_RULES).pop(target, None)


def op_rules() -> dict[str, ChannelRule]:
    return dict(_OP_RULES)


def module_rules() -> dict[type, ChannelRule]:
    return dict(_MODULE_RULES)


# ---------------------------------------------------------------- first client: channel shuffle

def tie_reordered(walk: Any, ids: np.ndarray) -> None:
    """Channels on several dims flattened back into one in a new order: removing channels keeps the
    order only if every slice along the first dim loses the same positions, so each slice's
    elements become one class (a unit is one channel of every group)."""
    for row in ids.reshape(ids.shape[0], -1):
        walk.tie(row)


def channel_shuffle(walk: Any, node: fx.Node) -> Any:
    """``channel_shuffle(x, g)``: channel ``r`` of group ``a`` moves to ``r * g + a``; pruned in
    multiples of ``g`` (one channel of every group per unit), so the shuffle stays a shuffle."""
    x = walk.val(node.args[0])
    groups = int(node.args[1] if len(node.args) > 1 else node.kwargs.get("groups", 1))
    if not isinstance(x, Info):
        return walk.unknown(node) if isinstance(x, ParamRef) else None
    if x.dims != (1,) or x.ids.size % groups:
        walk.freeze(x, node, "channel shuffle of a tensor whose channels are not dim 1")
        return None
    by_group = np.ascontiguousarray(x.ids.reshape(groups, -1).T)  # (position in group, group)
    tie_reordered(walk, by_group)
    return Info((1,), by_group.reshape(-1))


register_channel_rule("channel_shuffle", channel_shuffle)
register_channel_rule("native_channel_shuffle", channel_shuffle)

__all__ = ["ChannelRule", "channel_shuffle", "module_rules", "op_rules", "register_channel_rule",
           "tie_reordered", "unregister_channel_rule"]
