"""Can a Q4_1 GGUF's blocks be served bit for bit? onnxruntime's MatMulNBits with float zero points against uint8 ones.

A Q4_1 block stores ``w = d·q + m`` (fp16 ``d`` and ``m``, 4-bit ``q``). MatMulNBits computes ``(q − zp)·scale``; with
``zp = −m/d`` as a float the weights are exact, while uint8 zero points round ``m/d`` to an integer (what rtn
asym does). This times one MatMulNBits of SmolLM2's gate projection shape (576 → 1536, blocks of 32, accuracy
level 4) both ways for 1, 16 and 128 rows, and checks the float version's exactness.

    .venv/bin/python bench/matmul_zero_points.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _model(packed: np.ndarray, scales: np.ndarray, zp: np.ndarray, k: int, n: int, block: int, copies: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "S"),
             numpy_helper.from_array(zp, "Z")]
    nodes = [helper.make_node("MatMulNBits", ["x", "B", "S", "Z"], [f"y{i}"], domain="com.microsoft", K=k, N=n,
                              bits=4, block_size=block, accuracy_level=4) for i in range(copies)]
    graph = helper.make_graph(nodes, "zp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["M", n])
                               for i in range(copies)], inits)
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17),
                                                                  helper.make_opsetid("com.microsoft", 1)]
                             ).SerializeToString()


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=1.0, help="Time per measurement.")
    args = parser.parse_args()
    k, n, block, copies = 576, 1536, 32, 8
    blocks = k // block
    rng = np.random.default_rng(0)
    q = rng.integers(0, 16, (n, blocks, block), dtype=np.uint8)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    d = (rng.random((n, blocks), dtype=np.float32) * 0.01 + 0.001)
    m = -rng.random((n, blocks), dtype=np.float32) * 0.05
    float_zp = (-m / d).astype(np.float32).reshape(-1)
    int_zp = np.clip(np.round(-m / d), 0, 15).astype(np.uint8)
    packed_zp = (int_zp[:, 0::2] | (int_zp[:, 1::2] << 4)).reshape(-1)
    weight = (q.astype(np.float32) * d[..., None] + m[..., None]).reshape(n, k)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    times = {}
    for label, zp in (("uint8 zero points", packed_zp), ("float zero points", float_zp)):
        session = ort.InferenceSession(_model(packed, d.reshape(-1), zp, k, n, block, copies), options,
                                       providers=["CPUExecutionProvider"])
        for rows in (1, 16, 128):
            x = rng.standard_normal((rows, k), dtype=np.float32)
            session.run(None, {"x": x})
            start, runs = time.perf_counter(), 0
            while time.perf_counter() - start < args.seconds:
                session.run(None, {"x": x})
                runs += 1
            times[label, rows] = (time.perf_counter() - start) / runs / copies * 1e6
        if label.startswith("float"):
            x = rng.standard_normal((1, k), dtype=np.float32)
            err = np.abs(session.run(None, {"x": x})[0] - x @ weight.T).max() / np.abs(x @ weight.T).max()
            print(f"float zero points: max relative error against d·q + m: {err:.1e}")
    print("| rows | uint8 zero points (µs) | float zero points (µs) | float / uint8 |\n|---:|---:|---:|---:|")
    for rows in (1, 16, 128):
        a, b = times["uint8 zero points", rows], times["float zero points", rows]
        print(f"| {rows} | {a:.1f} | {b:.1f} | {b / a:.1f}× |")


if __name__ == "__main__":
    main()
