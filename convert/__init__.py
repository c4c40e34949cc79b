"""Checkpoint import: Hugging Face / PyTorch (``hf``), GGUF (``gguf``); CLI in ``__main__``."""
