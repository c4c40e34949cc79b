"""The reader adapter on both backends: off is the base model bit for bit, on is the LoRA,
MLX (trainable and inference form) and NumPy agree, and the assistant switches it on only
for turns that show memories."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from mlx_synapse.backends.numpy import load_model as load_numpy  # noqa: E402
from mlx_synapse.learn import apply_lora, lora_layers, save_adapter  # noqa: E402
from mlx_synapse.loader import load_model  # noqa: E402
from mlx_synapse.reader import Reader, reader_for, resolve  # noqa: E402

from .learn_util import tiny_model_dir  # noqa: E402

TOKENS = [5, 17, 42, 3, 88, 1, 60, 23, 9, 71, 2, 33]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model dir, adapter dir, MLX logits with the adapter as LoRA layers, without)."""
    root = tmp_path_factory.mktemp("reader")
    path = tiny_model_dir(root / "m", bits=4, seed=7)
    model, _ = load_model(path)
    base = np.array(model(mx.array([TOKENS]))[0])
    mx.random.seed(0)
    apply_lora(model, num_layers=2, rank=4, scale=2.0)  # every linear: q, k, v, o, gate, up, down
    rng = np.random.default_rng(3)
    for layer in lora_layers(model).values():
        layer.lora_b = mx.array(rng.normal(0, 0.05, layer.lora_b.shape).astype(np.float32))
    save_adapter(model, root / "ad")
    ref = np.array(model(mx.array([TOKENS]))[0])
    assert np.abs(ref - base).max() > 5e-2  # the adapter matters
    return path, root / "ad", ref, base


def test_mlx_trainable_form_off_is_bitwise_base_on_is_the_lora(tiny):
    path, ad, ref, base = tiny
    model, _ = load_model(path)
    r = Reader(model, ad)
    assert np.array_equal(np.array(model(mx.array([TOKENS]))[0]), base)
    with r.active():
        np.testing.assert_allclose(np.array(model(mx.array([TOKENS]))[0]), ref, atol=1e-5, rtol=0)
    assert np.array(model(mx.array([TOKENS]))[0]).tobytes() == base.tobytes()
    r.remove()
    assert not any(type(m).__name__ == "SwitchedLoRA" for _, m in model.named_modules())


def test_mlx_inference_form_fused_and_row_split(tiny):
    """mlx_synapse.load's CPU form (float, q|k|v and gate|up fused, rows split over streams)."""
    from mlx_synapse.learn import load_adapter
    from mlx_synapse.models.llama import fuse_projections
    from mlx_synapse.models.parallel import RowSplitLinear, split_rows_across_cpu_streams

    path, ad, _, _ = tiny

    def inference_form(adapter=None):  # what mlx_synapse.load builds on a CPU
        m, _ = load_model(path, dequantize=True, dtype="float32")
        if adapter is not None:
            load_adapter(m, adapter)
        fuse_projections(m)
        split_rows_across_cpu_streams(m, 2)
        return m

    model = inference_form()
    assert any(isinstance(m, RowSplitLinear) for _, m in model.named_modules())
    plain = np.array(model(mx.array([TOKENS]))[0])
    want = np.array(inference_form(ad)(mx.array([TOKENS]))[0])
    r = Reader(model, ad)
    assert np.array(model(mx.array([TOKENS]))[0]).tobytes() == plain.tobytes()
    with r.active():
        np.testing.assert_allclose(np.array(model(mx.array([TOKENS]))[0]), want, atol=1e-4, rtol=0)
    assert np.array(model(mx.array([TOKENS]))[0]).tobytes() == plain.tobytes()


@pytest.mark.parametrize("engine", [False, True], ids=["numpy", "engine"])
def test_numpy_backend_off_is_bitwise_base_on_matches_mlx(tiny, engine):
    path, ad, ref, _ = tiny
    model = load_numpy(path)
    if engine and model.engine is None:
        pytest.skip(f"C engine unavailable: {model.engine_status}")
    model.use_engine(engine)
    before = np.array(model(np.array(TOKENS)))
    r = reader_for(model, ad)
    assert reader_for(model, ad) is r  # one reader per model
    assert np.array(model(np.array(TOKENS))).tobytes() == before.tobytes()
    with r.active():
        got = np.array(model(np.array(TOKENS)))
    tol = 2e-4 if not engine else 5e-2
    np.testing.assert_allclose(got, ref, atol=tol, rtol=0)
    assert np.array(model(np.array(TOKENS))).tobytes() == before.tobytes()


def _greedy(forward, n=10):
    ids = list(TOKENS[:4])
    for _ in range(n):
        ids.append(int(np.argmax(forward(ids)[-1])))
    return ids[4:]


def test_greedy_parity_mlx_numpy_with_the_reader_on(tiny):
    path, ad, _, _ = tiny
    mm, _ = load_model(path)
    nm = load_numpy(path)
    nm.use_engine(False)
    with Reader(mm, ad).active(), reader_for(nm, ad).active():
        a = _greedy(lambda ids: np.array(mm(mx.array([ids]))[0]))
        b = _greedy(lambda ids: np.array(nm(np.array(ids))))
    assert a == b


def test_resolve_and_bad_adapters(tiny, tmp_path, monkeypatch):
    path, ad, _, _ = tiny
    assert resolve(False)[0] is None
    assert resolve(ad)[0] == ad
    none, why = resolve(tmp_path)
    assert none is None and "no adapter" in why
    monkeypatch.setenv("MLX_SYNAPSE_READER", "0")
    assert resolve(None) == (None, "reader off (MLX_SYNAPSE_READER=0)")
    monkeypatch.setenv("MLX_SYNAPSE_READER", str(ad))
    assert resolve(None)[0] == ad
    other = tiny_model_dir(tmp_path / "other", bits=4, seed=1, hidden_size=96, intermediate_size=160)
    with pytest.raises(ValueError, match="another"):
        Reader(load_model(other)[0], ad)
    with pytest.raises(ValueError):
        Reader(load_numpy(other), ad)


# ---------------------------------------------------------------- the assistant


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory, smollm2_dir):
    """A tiny random model with the default model's tokenizer (its chat template), and an adapter."""
    root = tmp_path_factory.mktemp("chat")
    path = tiny_model_dir(root / "m", bits=4, seed=2, tokenizer_from=smollm2_dir)
    model, _ = load_model(path)
    mx.random.seed(1)
    apply_lora(model, num_layers=2, rank=4, scale=2.0)
    rng = np.random.default_rng(5)
    for layer in lora_layers(model).values():
        layer.lora_b = mx.array(rng.normal(0, 0.05, layer.lora_b.shape).astype(np.float32))
    save_adapter(model, root / "ad")
    return path, root / "ad"


@pytest.mark.parametrize("backend", ["mlx", "numpy"])
def test_assistant_no_memory_turn_is_bitwise_the_base_model(chat_model, tmp_path, backend):
    """The no-memory turn's logits are byte-equal with the reader installed and without; a turn
    showing a memory runs with it on."""
    from mlx_synapse import load
    from mlx_synapse.assistant import Assistant
    from mlx_synapse.memory.bank import MemoryBank

    from .test_memory_bank import BagOfWords

    path, ad = chat_model
    bare, tok = load(path, backend=backend)
    model, _ = load(path, backend=backend)
    bank = MemoryBank(tmp_path / "m.db", BagOfWords(), backend="numpy")
    try:
        a = Assistant(model, tok, bank, user="u", reader=ad, auto_learn=False, min_score=0.3)
        assert a.reader() is not None and a.reader_note.startswith("reader on")

        def logits(m, ids):
            return np.array(m(mx.array([ids]))[0] if backend == "mlx" else m(np.array(ids)))

        ids, mems, _ = a.prepare("Tell me a joke about the sea.")
        assert not mems
        with a.reader_scope():
            with_reader = logits(model, ids)
        assert with_reader.tobytes() == logits(bare, ids).tobytes()

        a.remember("My sister lives in Coimbra.")
        ids, mems, _ = a.prepare("Where does my sister live?")
        assert mems
        with a.reader_scope():
            on = logits(model, ids)
        assert not np.array_equal(on, logits(bare, ids))
        assert logits(model, ids).tobytes() == logits(bare, ids).tobytes()  # off again after the turn
        a.respond("Where does my sister live?")  # the whole turn runs, and leaves the reader off
        assert not a.reader().enabled
    finally:
        bank.close()


def test_assistant_without_weights_runs_as_before(tmp_path, monkeypatch):
    from mlx_synapse.assistant import Assistant

    monkeypatch.delenv("MLX_SYNAPSE_READER", raising=False)
    a = Assistant(None, None, None, user="u", reader=tmp_path)
    assert a.reader() is None and "no adapter" in a.reader_note
    assert Assistant(None, None, None, user="u", reader=False).reader() is None


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_shipped_reader_on_the_default_model(tmp_path, smollm2_dir, backend, monkeypatch):
    """With the shipped weights: the no-memory turn is the base model's to the byte, and a
    two-hop memory turn is answered from the notes."""
    from mlx_synapse import load
    from mlx_synapse.assistant import Assistant
    from mlx_synapse.memory.bank import MemoryBank
    from mlx_synapse.reader import default_dir

    from .test_memory_bank import BagOfWords

    monkeypatch.delenv("MLX_SYNAPSE_READER", raising=False)
    if not (default_dir() / "adapters.safetensors").is_file():
        pytest.skip(f"no trained reader in {default_dir()} (nor in shared/data/reader)")
    model, tok = load(smollm2_dir, backend=backend)
    bare, _ = load(smollm2_dir, backend=backend)
    bank = MemoryBank(tmp_path / "m.db", BagOfWords(), backend="numpy")
    try:
        a = Assistant(model, tok, bank, user="u", max_tokens=24, min_score=0.0)
        ids, mems, _ = a.prepare("Write one sentence about autumn.")
        fwd = (lambda m: np.array(m(mx.array([ids]))[0])) if backend == "mlx" else (lambda m: np.array(m(np.array(ids))))
        with a.reader_scope():
            assert fwd(model).tobytes() == fwd(bare).tobytes()
        a.remember("My sister is called Hedda.")
        a.remember("Hedda lives in Coimbra.")
        assert "Coimbra" in a.respond("Where does my sister live?").text
    finally:
        bank.close()
