"""slmops tasks: the pipeline's work as plain typed functions, grouped by stage (data → train → quantize → evaluate).

Shared beside the stages: ``config`` (one pydantic model per stage), ``records`` (what steps hand each other),
``errors``, ``modeling`` (loading models and tokenizers), ``settings``, ``caching`` and ``progress``.
"""
