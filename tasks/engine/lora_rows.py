"""Several LoRA adapters in one decoding step: each row answers with its own adapter.

A multi-LoRA build's decoder (tasks/quantize/adapters.py) computes every adapted projection as
``base(x) + (x @ A) @ B``, with ``A`` and ``B`` model inputs of free rank. ``route_rows`` puts a ``Mul`` by a
per-row mask between the two MatMuls. ``LoraRows`` then feeds the A's of the step's adapters side by side (rank
r1 + r2 + …) and their B's stacked, with a mask that keeps, for each row, the rank columns of its own adapter
(none for the base): row i gets ``(x @ A_k) @ B_k`` of its adapter k and nothing of the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ROWS_INPUT = "slmops_lora_rows"


class LoraRoutingError(Exception):
    """The decoder's LoRA branches are not the A-then-B MatMul pairs ``route_rows`` expects."""


def route_rows(model: Any) -> dict[str, tuple[int, ...]]:
    """Insert the per-row mask after every LoRA A MatMul of ``model`` (an ``onnx.ModelProto``, changed in place);
    the default shape of every LoRA input by name (``[in, 0]`` for an A, ``[0, out]`` for a B)."""
    from onnx import helper

    graph = model.graph
    defaults = {t.name: t for t in graph.initializer if ".lora_A." in t.name or ".lora_B." in t.name}
    users: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    nodes = []
    for node in graph.node:
        nodes.append(node)
        if node.op_type != "MatMul" or node.input[1] not in defaults or ".lora_A." not in node.input[1]:
            continue
        following = users.get(node.output[0], [])
        if len(following) != 1 or following[0].op_type != "MatMul" or ".lora_B." not in following[0].input[1]:
            raise LoraRoutingError(f"{node.name}: its output does not feed exactly one LoRA B MatMul")
        masked = f"{node.output[0]}/{ROWS_INPUT}"
        nodes.append(helper.make_node("Mul", [node.output[0], ROWS_INPUT], [masked], name=f"{node.name}/{ROWS_INPUT}"))
        following[0].input[0] = masked
    if len(nodes) == len(graph.node):
        raise LoraRoutingError("no LoRA A MatMul")
    del graph.node[:]
    graph.node.extend(nodes)
    dtype = next(iter(defaults.values())).data_type
    graph.input.append(helper.make_tensor_value_info(ROWS_INPUT, dtype, ["batch_size", 1, "lora_r"]))
    return {name: tuple(t.dims) for name, t in defaults.items()}


class LoraRows:
    """The LoRA inputs and row mask of a step whose rows use any of ``adapters`` (name → {input name: weight}).

    A step whose adapter rows all use one adapter gets that adapter's weights alone (its own rank: no cost for the
    others); a step mixing adapters gets every adapter side by side, built once on first need. So the weights are
    held at most twice, however the traffic mixes, and a row joining or leaving never rebuilds them.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], adapters: dict[str, dict[str, np.ndarray]], dtype: Any):
        self.shapes, self.dtype = shapes, dtype
        unknown = {name for weights in adapters.values() for name in weights} - set(shapes)
        if unknown:
            raise LoraRoutingError(f"adapter weights the decoder has no input for: {sorted(unknown)[:3]}")
        # one rank per adapter: the largest of its projections (a smaller one is padded with zeros, which adds 0)
        self.ranks = {name: max(w.shape[1] for key, w in weights.items() if ".lora_A." in key)
                      for name, weights in adapters.items()}
        self.all = tuple(sorted(adapters))
        # every input of every adapter, at the adapter's rank (zeros where it does not adapt a projection)
        self._feeds: dict[tuple[str, ...], dict[str, np.ndarray]] = {
            (name,): {key: self._padded(weights.get(key), key, self.ranks[name]) for key in shapes}
            for name, weights in adapters.items()}

    def active(self, rows: Sequence[str | None]) -> tuple[str, ...]:
        """The adapter set a step of ``rows`` runs with: none, the one adapter they use, or all of them."""
        used = {a for a in rows if a is not None}
        return tuple(used) if len(used) <= 1 else self.all

    def feeds(self, active: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Every LoRA input for the adapter set ``active``: A's side by side, B's stacked (empty when none)."""
        if not active:
            return {}
        if active not in self._feeds:  # all adapters, concatenated once
            self._feeds[active] = {key: np.concatenate([self._feeds[(a,)][key] for a in active],
                                                       axis=1 if ".lora_A." in key else 0) for key in self.shapes}
        return self._feeds[active]

    def mask(self, rows: Sequence[str | None], active: tuple[str, ...]) -> np.ndarray:
        """``[rows, 1, total rank]``: ones over each row's own adapter's rank columns, zeros elsewhere."""
        offsets = np.cumsum([0, *(self.ranks[a] for a in active)])
        mask = np.zeros((len(rows), 1, int(offsets[-1])), self.dtype)
        for i, adapter in enumerate(rows):
            if adapter is not None:
                k = active.index(adapter)
                mask[i, 0, offsets[k]:offsets[k + 1]] = 1
        return mask

    def _padded(self, weight: np.ndarray | None, name: str, rank: int) -> np.ndarray:
        """``weight`` for input ``name`` at ``rank`` (zero-padded; all zeros where the adapter has none)."""
        shape = (self.shapes[name][0], rank) if ".lora_A." in name else (rank, self.shapes[name][1])
        part = np.zeros(shape, self.dtype)
        if weight is not None:
            part[: weight.shape[0], : weight.shape[1]] = weight
        return part
