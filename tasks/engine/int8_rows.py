"""Steps of many rows on int8 weights: the int4 build's MatMulNBits rewritten at load as DynamicQuantizeMatMul.

A decoding step of one row reads every weight once, and int4 reads half the bytes of int8: int4 wins. A step of
16 rows does 16 times the arithmetic on the same bytes, and there onnxruntime's int4 kernel (MatMulNBits, which
unpacks 4-bit blocks and scales each block) is slower than its int8 GEMM (DynamicQuantizeMatMul: MLAS's u8s8
QGEMM, which uses AMX or AVX-512 VNNI where the CPU has them). ``int8_matmuls`` makes a second graph of the same
decoder whose MatMuls take int8 weights, per output column, made from the int4 ones (dequantized, then rounded
to 255 levels per column: the int8 copy carries the int4 build's own quantization, not the fp32 model's);
``SlotDecoder`` runs steps of at least ``int8_from`` rows (and the prefills that join them) on it, over the same
KV-cache slots.

The int8 path quantizes each step's activations per tensor (one scale over all rows of the step), where
MatMulNBits at ``accuracy_level`` 4 quantizes each row's blocks of 32. Answers decoded on it can differ from the
int4 path's; bench/RESULTS.md has the measured exact match and perplexity on the demo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

PREFIX = "slmops_int8/"
MAX_INT8_BYTES = 1 << 30  # the int8 weights live in the serialized graph (protobuf's 2 GB limit)


class Int8Unsupported(Exception):
    """The decoder has no MatMulNBits the rewrite can take (the int8 path is then off)."""


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def dequantize_nbits(packed: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, k: int, n: int,
                     block_size: int, bits: int = 4) -> np.ndarray:
    """The ``[k, n]`` float32 weight of a 4- or 8-bit MatMulNBits: ``(q - zero point) × scale`` per block of
    ``block_size`` along k (``packed``: ``[n, blocks, block_size × bits / 8]`` bytes, low nibble first for 4 bits;
    uint8 zero points packed ``8 / bits`` per byte, low nibble first, or float, or absent: ``2^(bits-1)``)."""
    if bits not in (4, 8):
        raise Int8Unsupported(f"{bits}-bit MatMulNBits")
    blocks = packed.shape[1]
    if bits == 8:
        q = packed.reshape(n, blocks, block_size)
    else:
        q = np.empty((n, blocks, block_size), np.uint8)
        q[..., 0::2], q[..., 1::2] = packed & 0x0F, packed >> 4
    scales = scales.reshape(n, blocks).astype(np.float32)
    if zero_points is None:
        zp = np.full((n, blocks), 1 << (bits - 1), np.float32)
    elif zero_points.dtype == np.uint8 and bits == 8:
        zp = zero_points.reshape(n, -1)[:, :blocks].astype(np.float32)
    elif zero_points.dtype == np.uint8:
        zp = np.empty((n, zero_points.reshape(n, -1).shape[1] * 2), np.uint8)
        zero_points = zero_points.reshape(n, -1)
        zp[:, 0::2], zp[:, 1::2] = zero_points & 0x0F, zero_points >> 4
        zp = zp[:, :blocks].astype(np.float32)
    else:
        zp = zero_points.reshape(n, blocks).astype(np.float32)
    weight = (q.astype(np.float32) - zp[..., None]) * scales[..., None]
    return np.ascontiguousarray(weight.reshape(n, blocks * block_size)[:, :k].T)


def per_column_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of ``weight`` ``[k, n]`` with one scale per column: (int8 ``[k, n]``, scales ``[n]``)."""
    scale = np.abs(weight).max(axis=0) / 127.0
    scale[scale == 0] = 1.0
    return np.clip(np.rint(weight / scale), -127, 127).astype(np.int8), scale.astype(np.float32)


def int8_matmuls(model: Any, folder: Path) -> int:
    """Rewrite every 4- or 8-bit MatMulNBits of ``model`` (an ``onnx.ModelProto`` whose external weights lie in
    ``folder``; changed in place) as a DynamicQuantizeMatMul on per-column int8 weights; how many were rewritten.

    Raises ``Int8Unsupported`` when there is none, when one is neither 4- nor 8-bit, reorders its groups (``g_idx``), or
    when the int8 weights would not fit in one serialized graph.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    targets = [node for node in graph.node if node.op_type == "MatMulNBits"]
    if not targets:
        raise Int8Unsupported("the decoder has no MatMulNBits (not an int4 build)")
    total = sum(_attrs(node)["K"] * _attrs(node)["N"] for node in targets)
    if total > MAX_INT8_BYTES:
        raise Int8Unsupported(f"its int8 weights ({total / 2**30:.1f} GiB) exceed {MAX_INT8_BYTES / 2**30:.0f} GiB")

    def array(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(initializers[name], base_dir=str(folder)) if name else None

    used: set[str] = set()
    for node in targets:
        attrs = _attrs(node)
        if attrs.get("bits", 4) not in (4, 8):
            raise Int8Unsupported(f"{node.name} is {attrs['bits']}-bit")
        inputs = list(node.input) + [""] * (6 - len(node.input))
        if inputs[4]:
            raise Int8Unsupported(f"{node.name} reorders its groups (g_idx)")
        if any(name and name not in initializers for name in inputs[1:4]):
            raise Int8Unsupported(f"{node.name} takes weights that are not initializers")
        weight = dequantize_nbits(array(inputs[1]), array(inputs[2]), array(inputs[3]), attrs["K"], attrs["N"],
                                  attrs["block_size"], attrs.get("bits", 4))
        quantized, scale = per_column_int8(weight)
        p = f"{PREFIX}{node.name}/"
        graph.initializer.extend([numpy_helper.from_array(quantized, p + "B"),
                                  numpy_helper.from_array(scale, p + "scale")])
        args = [inputs[0], p + "B", p + "scale", "", inputs[5]]
        while not args[-1]:
            args.pop()
        new = helper.make_node("DynamicQuantizeMatMul", args, list(node.output), name=p + "DynamicQuantizeMatMul",
                               domain="com.microsoft")
        node.CopyFrom(new)
        used.update(name for name in inputs[1:4] if name)
    still = {name for node in graph.node for name in node.input}
    keep = [t for t in graph.initializer if t.name not in used or t.name in still]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return len(targets)
