"""The reader: a small LoRA adapter, trained once on synthetic memory-grounded QA, that the
assistant switches on only for turns that show memories.

* :mod:`.vocab`, :mod:`.data`: the training examples, in the assistant's memory-turn
  format, from this package's own templates and values (no user data).
* :mod:`.train`: ``python -m mlx_synapse.reader.train --out DIR``: data, training with
  replayed general text, early stop on validation loss, WikiText-2 perplexity (and
  HellaSwag) with the adapter off and on, adapter + ``report.json`` written to ``DIR``.
* :mod:`.apply`: :class:`Reader`, the adapter on a model of either backend, off until
  switched on; the trained weights are looked for in the cache and ``shared/data/reader``
  (:func:`default_dir`), not shipped in the package.

With the adapter off the model is the base model itself (the NumPy backend drops the
matrices; MLX's switched layers return the base layer's output as it is), so a turn
without memories is computed exactly as without a reader.
"""

from .apply import ENV, Reader, default_dir, reader_for, resolve

__all__ = ["ENV", "Reader", "default_dir", "reader_for", "resolve"]
