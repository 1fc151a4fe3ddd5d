"""Serving runtime: an OpenAI-compatible and SageMaker-compatible ASGI server over onnxruntime-genai."""
