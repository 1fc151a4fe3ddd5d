"""Quantization: ONNX for onnxruntime-genai (model builder), Olive GPTQ, GGUF for llama.cpp/Ollama."""
