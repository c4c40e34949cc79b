"""Convert a Hugging Face checkpoint and check both backends agree on it.

    python examples/convert_and_compare.py HF_DIR_OR_ID OUT_DIR
"""

import sys

import numpy as np

from mlx_synapse import load
from mlx_synapse.convert.hf import convert_hf

src, out = sys.argv[1], sys.argv[2]
convert_hf(src, out)
(mlx_model, tok), (np_model, _) = load(out, backend="mlx", dtype="float32"), load(out, backend="numpy")
ids = tok.encode("The quick brown fox jumps over the lazy dog.")

import mlx.core as mx  # noqa: E402

diff = np.abs(np.array(mlx_model(mx.array([ids]))[0]) - np_model(np.array(ids))).max()
print(f"converted {src} -> {out}; max |logit difference| between backends: {diff:.2e}")
