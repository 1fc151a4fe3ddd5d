"""HTTP routes of the serving runtime, one module per API: OpenAI, SageMaker, operations."""
