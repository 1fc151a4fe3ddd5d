"""Training: the shared loop, distillation, LoRA fine-tuning and merge, greedy generation for scoring."""
