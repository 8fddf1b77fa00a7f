"""Interval bound propagation over the DAG (paper-spec §3.1)."""
from __future__ import annotations

from collections import Counter

import torch

from toolkit.ir import INPUT

from .backward import _storage
from .ops import rule_for



def ibp_bounds(graph, lo: torch.Tensor, hi: torch.Tensor, upto: str | None = None, keep=None) -> dict:
    """Interval bounds of every node output (and the input), in topological order.

    ``keep``: when given, the bounds of a node outside it are dropped once its last consumer has read them, so
    the pass holds the kept nodes' bounds plus a layer or two (for a certification by IBP alone: the nodes a
    relaxation would need, whose finiteness ``sanitize`` checks, and the last layer)."""
    bounds = {INPUT: (lo, hi)}
    left = None if keep is None else Counter(k for key in graph.order for k in graph.edges[key])
    for key in graph.order:
        node, ins = graph.nodes[key], graph.edges[key]
        rule = rule_for(node, "ibp")
        if (left is not None and len(ins) == 1 and left[ins[0]] == 1 and ins[0] != INPUT and ins[0] not in keep
                and _exclusive(ins[0], bounds)):
            # the only reader of bounds nobody keeps: the rule may reuse their memory (``Rule.ibp_donated``)
            bounds[key] = rule.ibp_donated(node, list(bounds.pop(ins[0])))
        else:
            bounds[key] = rule.ibp(node, *(bounds[k] for k in ins))
        if key == upto:
            break
        if left is not None:
            for k in ins:
                left[k] -= 1
                if left[k] == 0 and k != INPUT and k not in keep:
                    bounds.pop(k, None)
    return bounds


def _exclusive(key: str, bounds: dict) -> bool:
    """True when no other live bounds share the memory of ``key``'s (the caller's input box included): a
    Reshape / Flatten returns views of its input's bounds, and donating those wrote into the caller's
    ``InputSet.hi`` (an MLP's Linear after Flatten; session 16) or into bounds another node still reads."""
    mine = {_storage(t) for t in bounds[key]}
    return all(_storage(t) not in mine for k, pair in bounds.items() if k != key for t in pair)


def exact_on_box(graph) -> set:
    """Node keys whose IBP bounds are already the tightest possible per cell: the input set is a box and
    at most one mixing affine op separates the node from the input (the first layer, §2.5). For those,
    IBP = Fast-Lin = CROWN, so the expensive backward pass is skipped."""
    is_box, exact = {INPUT}, set()
    for key in graph.order:
        node, ins = graph.nodes[key], graph.edges[key]
        rule = rule_for(node)
        if len(ins) == 1 and ins[0] in is_box and rule.tight_on_box:
            exact.add(key)
            if rule.box_preserving:
                is_box.add(key)
    return exact


def ibp_spec_bound(graph, bounds: dict, C: torch.Tensor) -> torch.Tensor:
    """Lower bound of C·f over the IBP bounds, with C merged into a final Linear layer (§3.1: tighter than
    combining logit intervals)."""
    out = graph.output
    node = graph.nodes[out]
    n, s = C.shape[:2]
    weight = rule_for(node).dense_weight(node)
    if weight is not None:
        lo, hi = bounds[graph.edges[out][0]]
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        # The centre term C·(W·mid + b) through the K logits; only the radius term needs C·W per sample.
        center = (C @ torch.nn.functional.linear(mid, weight, node.bias).unsqueeze(-1)).squeeze(-1)  # (N, S)
        W = C @ weight                               # (N, S, in)
        # |C·W|·rad as multiply-and-sum (a batched GEMM with one column ran ~2× slower on CPU); when autograd
        # records nothing, in place, so C·W is the only tensor of its size (one less than |·| out of place).
        if W.requires_grad or rad.requires_grad:
            return center - (W.abs() * rad.unsqueeze(1)).sum(-1)
        return center - W.abs_().mul_(rad.unsqueeze(1)).sum(-1)
    lo, hi = bounds[out]
    mid, rad = ((hi + lo) / 2).reshape(n, -1, 1), ((hi - lo) / 2).reshape(n, -1, 1)
    return (C @ mid).squeeze(-1) - (C.abs() @ rad).squeeze(-1)
