"""Episodic memory: what the model remembers between conversations.

* ``bank``: :class:`MemoryBank`, the API (add / search / forget / export / import / budget).
* ``store``: the durable SQLite file (``files``: its directories, permissions and
  holders; ``transfer``: export/import); ``index``: the per-user INT8 cosine index;
  ``int8``: per-entry symmetric quantization of vectors.
* ``encoders``: texts to unit-norm vectors (all-MiniLM-L6-v2, or the LM's hidden states).
* ``surprise``: mean token NLL under the frozen LM, and the gate that decides what to write.
* ``policy``: which entries degrade first over budget (learned MLP, FIFO, LRU, random).

Importing this package loads neither MLX nor a model; encoders load theirs when built.
"""

from ..backends.numpy.bert import NumpyBert, load_numpy_bert
from .bank import Entry, MemoryBank, ScrubPending, WriteResult, default_db_path
from .encoders import (
    MINILM_NAME,
    MINILM_PACKAGE,
    Encoder,
    HiddenStateEncoder,
    MiniLMEncoder,
    find_minilm_dir,
    load_bert,
)
from .index import VectorIndex
from .policy import EntryStats, FIFOPolicy, LearnedPolicy, LRUPolicy, RandomPolicy, plan_degradation
from .store import MemoryStore
from .surprise import SurpriseGate, SurpriseScorer

__all__ = [
    "MINILM_NAME",
    "MINILM_PACKAGE",
    "Encoder",
    "Entry",
    "EntryStats",
    "FIFOPolicy",
    "HiddenStateEncoder",
    "LRUPolicy",
    "LearnedPolicy",
    "MemoryBank",
    "MemoryStore",
    "MiniLMEncoder",
    "NumpyBert",
    "RandomPolicy",
    "ScrubPending",
    "SurpriseGate",
    "SurpriseScorer",
    "VectorIndex",
    "WriteResult",
    "default_db_path",
    "find_minilm_dir",
    "load_bert",
    "load_numpy_bert",
    "plan_degradation",
]
