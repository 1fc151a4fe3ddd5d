"""Batch transform: input reading and validation, resumable parts, the executor interface, the local executor,
input profiles and drift."""
