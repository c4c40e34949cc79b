"""Episodic memory: what the model remembers between conversations.

``encoders`` turns texts into unit-norm vectors for the memory bank.
"""

from ..backends.numpy.bert import NumpyBert, load_numpy_bert
from .encoders import (
    MINILM_NAME,
    MINILM_PACKAGE,
    Encoder,
    HiddenStateEncoder,
    MiniLMEncoder,
    find_minilm_dir,
    load_bert,
)

__all__ = [
    "MINILM_NAME",
    "MINILM_PACKAGE",
    "Encoder",
    "HiddenStateEncoder",
    "MiniLMEncoder",
    "NumpyBert",
    "find_minilm_dir",
    "load_bert",
    "load_numpy_bert",
]
