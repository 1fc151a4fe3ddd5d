"""Models from outside slmops: ``gguf:`` files and ``ollama:`` models, dequantized once into Hugging Face folders."""
