"""The one decoding engine: every ONNX answer slmops gives — the server, the SageMaker container, the gate's
evaluation, the local batch executor — is decoded here.

- ``engine.py``: ``Engine``, the queue and worker thread; ``submit``/``cancel`` for the server, ``run`` for
  callers that want a set of requests answered.
- ``scheduler.py``: the continuous scheduler (admit, prefill groups, step) over ``slots.py``'s KV-cache slots,
  with ``int8_rows.py`` (int8 steps) and ``lora_rows.py`` (an adapter per row).
- ``output.py``: each request's output state: incremental detokenizing, stop strings, logprobs, events.
- ``sampling.py``: greedy, temperature and top-p picks, log-probabilities.
- ``structured.py``: structured outputs' token masks (llguidance).
- ``static_batch.py``: onnxruntime-genai's own static batches: the fallback for decoders without
  GroupQueryAttention, and the reference the engine's answers are tested against.
- ``protocol.py``, ``settings.py``: what callers exchange with the engine, and its one settings model.
"""
