"""Instruction data: reading and validating JSONL, chat rendering and tokenization, the demo asset factory."""
