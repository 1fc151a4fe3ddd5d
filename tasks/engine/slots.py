"""An onnxruntime-genai folder's decoder run directly with onnxruntime, each row in its own KV-cache slot.

onnxruntime-genai's generator fixes its rows when it starts, so a new request cannot join a running batch. The
decoder it runs can: its GroupQueryAttention reads each row's length from the attention mask, so rows of
different lengths decode together. ``SlotDecoder`` keeps one preallocated cache per layer, ``[slots, kv heads,
context length, head size]``, whose first ``n`` slots are the live rows. Each decoding step binds those slots as
both past and present (onnxruntime's shared-buffer path writes the new key and value in place). A new row is
prefilled alone and copied into the next free slot; a row that leaves is replaced by the last one. So rows join and
leave between steps, and one step costs what a static batch of the same rows costs.

The decoder is loaded with one change to its graph (``last_position_logits``): lm_head projects only the position
each row needs, not every position of a prompt, so a prefill computes and returns one row of logits per prompt.
With ``int8`` on, steps of many rows (and the prefills that join them) run on a second session whose MatMuls take
int8 weights made from the int4 ones (tasks/engine/int8_rows.py), bound to the same cache slots.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.engine.int8_rows import Int8Unsupported, int8_matmuls
from tasks.engine.lora_rows import ROWS_INPUT, LoraRoutingError, LoraRows, route_rows
from tasks.served_folder import DecoderLayout, ServedFolder

LAST_INPUT = "slmops_last_positions"  # per row: the flat index (row × width + position) whose logits lm_head makes
LM_HEAD_OPS = {"MatMul", "MatMulNBits", "Gemm"}

CALIBRATION_ROWS = (2, 4, 8, 16)  # row counts ``int8="auto"`` times on both paths
CALIBRATION_MARGIN = 0.9  # the int8 path is taken where its step takes at most this share of the int4 step's
CALIBRATION_MIN_SAVING_S = 0.0005  # … and saves at least this much a step: below it the int8 copy's memory buys
# nothing a client could notice (the demo's tiny model steps in ~0.1 ms either way)

ONNX_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32}


class SlotsUnsupported(Exception):
    """The folder's decoder cannot be driven row by row (the engine then uses onnxruntime-genai's batches)."""


def check_slots(layout: DecoderLayout) -> None:
    """Raise SlotsUnsupported unless the decoder needs only ids, a mask and per-layer caches (optionally position
    ids; LoRA inputs with defaults are fine) and attends with GroupQueryAttention, whose per-row lengths let rows
    of different lengths share a step. Reads the graph only, not its weights."""
    import onnx

    graph = onnx.load(str(layout.file), load_external_data=False).graph
    if not any(node.op_type == "GroupQueryAttention" for node in graph.node):
        raise SlotsUnsupported(f"{layout.file.name} has no GroupQueryAttention")
    expected = {layout.names["input_ids"], layout.names["attention_mask"], layout.names["position_ids"],
                *(name for layer in range(layout.layers) for name in layout.past(layer))}
    defaults = {i.name for i in graph.initializer}
    unknown = sorted({i.name for i in graph.input} - expected - defaults)
    if unknown:
        raise SlotsUnsupported(f"{layout.file.name} has inputs the slot decoder does not feed: {unknown}")
    if layout.names["logits"] not in {o.name for o in graph.output}:
        raise SlotsUnsupported(f"{layout.file.name} has no output {layout.names['logits']!r}")


def last_position_logits(model: Any, logits: str) -> bool:
    """Make ``model`` (an ``onnx.ModelProto``, changed in place) project to its output ``logits`` one position per
    row: the position ``LAST_INPUT`` names for each row, as a flat index into the ``[batch × sequence]`` hidden
    states.

    A prefill otherwise runs lm_head over every prompt position and returns ``[rows, width, vocab]`` logits (a
    2048-position prompt of a 49k vocabulary: 400 MB) of which only the last of each row is used. The lm_head is
    the MatMul that the logits come from (through at most a Cast); its input is flattened to ``[batch × sequence,
    hidden]``, gathered at ``LAST_INPUT`` and given back its sequence axis of one. False (unchanged) when no such
    MatMul feeds the logits.
    """
    from onnx import TensorProto, helper

    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    head = producers.get(logits)
    if head is not None and head.op_type == "Cast":
        head = producers.get(head.input[0])
    if head is None or head.op_type not in LM_HEAD_OPS:
        return False
    hidden, p = head.input[0], f"{LAST_INPUT}/"
    nodes = [helper.make_node("Flatten", [hidden], [p + "flat"], axis=2, name=p + "Flatten"),
             helper.make_node("Gather", [p + "flat", LAST_INPUT], [p + "rows"], axis=0, name=p + "Gather"),
             helper.make_node("Unsqueeze", [p + "rows", p + "axis"], [p + "out"], name=p + "Unsqueeze")]
    graph.initializer.append(helper.make_tensor(p + "axis", TensorProto.INT64, [1], [1]))
    graph.input.append(helper.make_tensor_value_info(LAST_INPUT, TensorProto.INT64, ["batch_size"]))
    head.input[0] = p + "out"
    at = list(graph.node).index(head)
    for offset, node in enumerate(nodes):
        graph.node.insert(at + offset, node)
    return True


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; nothing where libc has none).

    Building the int8 session frees a few hundred MB (the rewritten graph, onnxruntime's copies of the weights
    before it packs them) in chunks that lie below live allocations, which ``free()`` never returns: a process
    holding the 135M model's slot decoder with int8 steps on kept +489 MB over int8 off before this call, +136 MB
    after (bench/RESULTS.md)."""
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).malloc_trim(0)  # libc is already loaded: no library search


def int8_threshold(timings: dict[int, Sequence[float]]) -> int | None:
    """The smallest row count from which the int8 path wins: its step takes at most ``CALIBRATION_MARGIN`` of the
    int4 step's, and at least ``CALIBRATION_MIN_SAVING_S`` less, there and at every larger row count timed
    (``timings``: rows → (int4 seconds, int8 seconds)); None where no such count exists."""
    rows = sorted(timings)
    wins = {n: timings[n][1] <= min(CALIBRATION_MARGIN * timings[n][0], timings[n][0] - CALIBRATION_MIN_SAVING_S)
            for n in rows}
    return next((n for n in rows if all(wins[m] for m in rows if m >= n)), None)


class SlotCache:
    """One KV cache per layer with ``slots`` rows of the whole context window; ``lengths[i]`` tokens are in slot i.

    The caches live in one anonymous memory map: its pages are zero and unbacked until first written, so memory
    grows with the tokens really cached, not with the window, and all of it goes back when the cache is dropped.
    (``np.zeros`` would not do: once glibc has freed a block this size it serves the next from its heap and
    zeroes every byte, over a second for a 16-slot cache of a 2048-token model.)
    """

    def __init__(self, layout: DecoderLayout, slots: int, dtype: Any, logits_dtype: Any = np.float32):
        shape = (slots, layout.kv_heads, layout.context_length, layout.head_size)
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        self._memory = mmap.mmap(-1, 2 * layout.layers * size)
        caches = [np.frombuffer(self._memory, dtype, int(np.prod(shape)), i * size).reshape(shape)
                  for i in range(2 * layout.layers)]
        self.keys, self.values = caches[0::2], caches[1::2]
        self.lengths = np.zeros(slots, np.int64)
        self.slots = slots
        self.logits = np.zeros((slots, 1, layout.vocab_size), logits_dtype)  # each step's, written by the run
        self.bindings: dict[tuple[int, tuple[str, ...], bool], Any] = {}  # (rows, adapters, int8) → an IOBinding

    def put(self, slot: int, presents: list[np.ndarray]) -> None:
        """Store a prefilled row's present keys and values (``[1, kv heads, length, head size]`` each)."""
        length = presents[0].shape[2]
        for layer, (key, value) in enumerate(zip(presents[0::2], presents[1::2], strict=True)):
            self.keys[layer][slot, :, :length] = key[0]
            self.values[layer][slot, :, :length] = value[0]
        self.lengths[slot] = length

    def move(self, source: int, target: int) -> None:
        """Copy slot ``source``'s cached tokens into slot ``target`` (a leaving row's place)."""
        length = int(self.lengths[source])
        for cache in (*self.keys, *self.values):
            cache[target, :, :length] = cache[source, :, :length]
        self.lengths[target] = length


class SlotDecoder:
    """The decoder session; ``prefill`` prompts into slots, ``decode`` one token for the first ``n`` slots.

    ``adapters``: LoRA adapter files (a multi-LoRA build) by name. Their decoder is loaded with a per-row mask
    between each LoRA branch's two MatMuls (tasks/engine/lora_rows.py), so every row of a step answers with its
    own adapter (or the base).

    ``int8``: steps of ``int8_from`` rows or more, and the prefills that bring the live rows to that many, run on
    a second session of the same decoder with int8 MatMuls (tasks/engine/int8_rows.py) — ``"off"``; ``"on"``
    (from 2 rows); ``"auto"``: both paths are timed at load and the int8 one is kept from the smallest row count
    where it saves 10% and 0.5 ms a step (and at every larger count timed: ``int8_threshold``), or dropped. A lone
    row (its prefill and its steps) always runs on the build's own weights. Not with adapters.
    """

    def __init__(self, folder: Path, threads: int, adapters: dict[str, Path] | None = None, int8: str = "off"):
        import onnxruntime as ort

        self.ort, self.layout = ort, ServedFolder.read(folder).decoder
        check_slots(self.layout)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3
        self.lora: LoraRows | None = None
        model, shapes, self.last_only = self._graph(options, bool(adapters))
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.int8_session: Any = None
        self.int8_from: int | None = None
        self.int8_note = "off"
        if int8 != "off" and adapters:
            self.int8_note = "off: not with LoRA adapters"
        elif int8 != "off":
            try:
                int8_matmuls(model, self.layout.file.parent)
                self.int8_session = ort.InferenceSession(model.SerializeToString(), options,
                                                         providers=["CPUExecutionProvider"])
                # the Python wrapper keeps the graph's bytes (the int8 weights: ~1 byte a parameter) only to
                # re-create the session after a GPU provider fails; on the CPU provider they are dead weight
                if hasattr(self.int8_session, "_model_bytes"):
                    self.int8_session._model_bytes = None
                self.int8_from, self.int8_note = 2, "on: from 2 rows"
            except Int8Unsupported as exc:
                if int8 == "on":
                    raise ValueError(f"int8_steps 'on' cannot serve {folder}: {exc}") from exc
                self.int8_note = f"off: {exc}"
        del model
        if adapters:
            # each adapter's weights, fed as the inputs they override (onnxruntime 1.31 applies an adapter
            # activated through RunOptions only in part when the run uses an IOBinding)
            files = {name: ort.AdapterFormat.read_adapter(str(file)) for name, file in adapters.items()}
            values = {name: adapter.get_parameters() for name, adapter in files.items()}
            # numpy() views memory the adapter objects own: LoraRows copies it while they are alive
            weights = {name: {k: v.numpy() for k, v in params.items()} for name, params in values.items()}
            rows_type = ONNX_TYPES[{i.name: i.type for i in self.session.get_inputs()}[ROWS_INPUT]]
            self.lora = LoraRows(shapes, weights, rows_type)
            del files, values, weights
        types = {i.name: i.type for i in self.session.get_inputs()}
        self.id_type = ONNX_TYPES[types[self.layout.names["input_ids"]]]
        self.mask_type = ONNX_TYPES[types[self.layout.names["attention_mask"]]]
        self.cache_type = ONNX_TYPES[types[self.layout.past(0)[0]]]
        outputs = {o.name: o.type for o in self.session.get_outputs()}
        self.logits_type = ONNX_TYPES[outputs[self.layout.names["logits"]]]
        self.positions = self.layout.names["position_ids"] in types
        if self.int8_session is not None and int8 == "auto":
            self._calibrate()
        if int8 != "off":
            release_freed_memory()

    def _calibrate(self) -> None:
        """Time steps of ``CALIBRATION_ROWS`` rows on both paths; keep the int8 one from ``int8_threshold``, or
        drop it."""
        import time

        rows = [r for r in CALIBRATION_ROWS if r + 8 < self.layout.context_length] or [2]
        cache = self.cache(max(rows))
        self.int8_from = None
        self.prefill(cache, 0, [[1] * 4] * max(rows))
        timings: dict[int, list[float]] = {}
        for n in rows:
            tokens = np.ones(n, np.int64)
            best = [float("inf"), float("inf")]
            for _ in range(3):  # alternating, so a noisy moment costs both alike
                for path, start_from in ((0, None), (1, 2)):
                    self.int8_from = start_from
                    cache.lengths[:n] = 4
                    start = time.perf_counter()
                    self.decode(cache, tokens)
                    best[path] = min(best[path], time.perf_counter() - start)
            timings[n] = best
        start_from = int8_threshold(timings)
        measured = ", ".join(f"{n} rows {1000 * t[0]:.2f}/{1000 * t[1]:.2f} ms" for n, t in timings.items())
        if start_from is None:
            self.int8_session, self.int8_from = None, None
            self.int8_note = f"auto: off (int4/int8 steps: {measured})"
        else:
            self.int8_from = start_from
            self.int8_note = f"auto: from {start_from} rows (int4/int8 steps: {measured})"

    def _graph(self, options: Any, lora: bool) -> tuple[Any, dict[str, tuple[int, ...]], bool]:
        """The decoder graph (an ``onnx.ModelProto`` whose weights stay in their files beside it): with logits of
        one position per row (``last_position_logits``) and, with ``lora``, the per-row LoRA mask; the LoRA inputs'
        default shapes; whether the logits are one position's."""
        import onnx

        model = onnx.load(str(self.layout.file), load_external_data=False)
        shapes: dict[str, tuple[int, ...]] = {}
        if lora:
            try:
                shapes = route_rows(model)
            except LoraRoutingError as exc:
                raise SlotsUnsupported(f"{self.layout.file.name}: {exc}") from exc
        last_only = last_position_logits(model, self.layout.names["logits"])
        options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                         str(self.layout.file.parent))
        return model, shapes, last_only

    def cache(self, slots: int) -> SlotCache:
        """An empty cache of ``slots`` rows for this decoder."""
        return SlotCache(self.layout, slots, self.cache_type, self.logits_type)

    def prefill(self, cache: SlotCache, slot: int, prompts: list[list[int]],
                adapters: Sequence[str | None] | None = None) -> list[np.ndarray]:
        """Run ``prompts`` together (right-padded, each row's length from the mask), prompt ``i`` with LoRA adapter
        ``adapters[i]`` (None: the base); store its keys and values in slot ``slot + i``; the last position's
        logits of each prompt. (On the int8 session when ``slot + len(prompts)`` rows reach ``int8_from``: the
        steps that follow run there too.)"""
        names, width = self.layout.names, max(len(p) for p in prompts)
        ids = np.zeros((len(prompts), width), self.id_type)
        mask = np.zeros((len(prompts), width), self.mask_type)
        for i, prompt in enumerate(prompts):
            ids[i, : len(prompt)], mask[i, : len(prompt)] = prompt, 1
        feeds = {names["input_ids"]: ids, names["attention_mask"]: mask}
        if self.positions:
            feeds[names["position_ids"]] = np.broadcast_to(np.arange(width, dtype=self.id_type), ids.shape)
        if self.lora:
            rows = list(adapters or [None] * len(prompts))
            active = self.lora.active(rows)
            feeds |= self.lora.feeds(active) | {ROWS_INPUT: self.lora.mask(rows, active)}
        if self.last_only:
            feeds[LAST_INPUT] = np.array([i * width + len(p) - 1 for i, p in enumerate(prompts)], np.int64)
        empty = np.zeros((len(prompts), self.layout.kv_heads, 0, self.layout.head_size), self.cache_type)
        outputs = [names["logits"]]
        for layer in range(self.layout.layers):
            feeds |= dict.fromkeys(self.layout.past(layer), empty)
            outputs += self.layout.present(layer)
        session = self.int8_session if self._int8(slot + len(prompts)) else self.session
        logits, *presents = session.run(outputs, feeds)
        for i, prompt in enumerate(prompts):
            cache.put(slot + i, [present[i : i + 1, :, : len(prompt)] for present in presents])
        return [logits[i, 0 if self.last_only else len(prompt) - 1] for i, prompt in enumerate(prompts)]

    def decode(self, cache: SlotCache, tokens: np.ndarray, adapters: Sequence[str | None] | None = None
               ) -> np.ndarray:
        """Append ``tokens[i]`` to slot ``i`` for the first ``len(tokens)`` slots, row ``i`` with LoRA adapter
        ``adapters[i]`` (None: the base); the next-token logits of each (a view of the cache's logits buffer, valid
        until its next step)."""
        names, n = self.layout.names, len(tokens)
        lengths = cache.lengths[:n]
        width = int(lengths.max()) + 1
        mask = (np.arange(width)[None] <= lengths[:, None]).astype(self.mask_type)
        ids = np.asarray(tokens, self.id_type)[:, None]
        rows = list(adapters or [None] * n)
        active = self.lora.active(rows) if self.lora else ()
        int8 = self._int8(n)
        binding = cache.bindings.get((n, active, int8)) or self._bind(cache, n, active, int8)
        binding.bind_cpu_input(names["input_ids"], ids)
        binding.bind_cpu_input(names["attention_mask"], mask)
        if self.positions:
            positions = lengths.astype(self.id_type)[:, None]
            binding.bind_cpu_input(names["position_ids"], positions)
        if self.lora:
            row_mask = self.lora.mask(rows, active)
            binding.bind_cpu_input(ROWS_INPUT, row_mask)
        (self.int8_session if int8 else self.session).run_with_iobinding(binding)
        cache.lengths[:n] += 1
        return cache.logits[:n, -1]

    def _int8(self, rows: int) -> bool:
        """Whether work leaving ``rows`` rows live runs on the int8 session."""
        return self.int8_from is not None and rows >= self.int8_from

    def _bind(self, cache: SlotCache, n: int, active: tuple[str, ...], int8: bool = False) -> Any:
        """An IOBinding of the first ``n`` slots of ``cache`` for rows using the adapters ``active`` on the int8 or
        the build's session (kept for the next steps like it): each layer's cache as both past and present, the
        logits buffer, the LoRA weights."""
        layout = self.layout
        binding = (self.int8_session if int8 else self.session).io_binding()
        if self.last_only:  # one position per row: row i's is flat index i
            binding.bind_ortvalue_input(LAST_INPUT, self.ort.OrtValue.ortvalue_from_numpy(np.arange(n, dtype=np.int64)))
        if self.lora:
            for name, value in self.lora.feeds(active).items():  # weights override initializers: OrtValues
                binding.bind_ortvalue_input(name, self.ort.OrtValue.ortvalue_from_numpy(value))
        binding.bind_output(layout.names["logits"], "cpu", 0, self.logits_type, [n, 1, layout.vocab_size],
                            cache.logits.ctypes.data)
        shape = [n, layout.kv_heads, layout.context_length, layout.head_size]
        for layer in range(layout.layers):
            for name, out, buffer in zip(layout.past(layer), layout.present(layer),
                                         (cache.keys[layer], cache.values[layer]), strict=True):
                # the same memory as past and present: GroupQueryAttention writes the new token in place
                binding.bind_input(name, "cpu", 0, self.cache_type, shape, buffer.ctypes.data)
                binding.bind_output(out, "cpu", 0, self.cache_type, shape, buffer.ctypes.data)
        cache.bindings[(n, active, int8)] = binding
        return binding
