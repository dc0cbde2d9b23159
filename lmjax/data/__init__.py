"""Data: text sources, tokenizers and the batching pipeline."""
