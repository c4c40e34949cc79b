"""The real default model (SmolLM2-135M-Instruct from its Q4_1 GGUF): quality and
agreement between the MLX and NumPy backends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval" / "wikitext2_raw_test.txt"
# ../shared/data/README.md: a NumPy forward of the dequantized weights gives ~20.3
# on the first 512 tokens of WikiText-2 raw test.
REFERENCE_PPL = 20.3


@pytest.fixture(scope="module")
def numpy_model(smollm2_dir):
    from mlx_synapse import load

    return load(smollm2_dir, backend="numpy")


@pytest.fixture(scope="module")
def mlx_model(smollm2_dir):
    pytest.importorskip("mlx.core")
    from mlx_synapse import load

    # float32 on both sides: the test is about equal implementations, not precisions.
    return load(smollm2_dir, backend="mlx", dtype="float32")


def _nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
    return lse - logits[np.arange(len(targets)), targets]


def test_wikitext2_perplexity_matches_reference(numpy_model):
    if not WIKITEXT.is_file():
        pytest.skip(f"{WIKITEXT} not found (see ../shared/data/README.md)")
    model, tok = numpy_model
    ids = np.array(tok.encode(WIKITEXT.read_text(encoding="utf-8")[:20000])[:512])
    assert len(ids) == 512
    logits = model(ids[:-1])
    ppl = float(np.exp(_nll(logits, ids[1:]).mean()))
    assert abs(ppl - REFERENCE_PPL) / REFERENCE_PPL < 0.05, f"perplexity {ppl:.2f} vs reference {REFERENCE_PPL}"


def test_sensible_greedy_answer(numpy_model):
    from mlx_synapse.generate import build_prompt, generate

    model, tok = numpy_model
    ids = build_prompt(tok, "What is the capital of France?")
    answer = generate(model, tok, ids, max_tokens=24)
    assert "Paris" in answer, answer


def test_backends_agree_on_logits_and_greedy_tokens(numpy_model, mlx_model):
    import mlx.core as mx

    from mlx_synapse.backends.numpy import generate_step as np_step
    from mlx_synapse.generate import build_prompt, generate_step

    (np_model, tok), (mx_model, _) = numpy_model, mlx_model
    ids = build_prompt(tok, "Tell me a short story about a lighthouse keeper.")
    ours = np.array(mx_model(mx.array([ids]))[0])
    np_model.use_engine(False)  # NumPy's float32 path: the same dequantized weights
    try:
        np.testing.assert_allclose(ours, np_model(np.array(ids)), atol=1e-3, rtol=0)  # logits reach ~38
    finally:
        np_model.use_engine(True)
    if np_model.engine is not None and any(np_model.engine.tiles):  # prefill on the codes: 16-bit activations
        assert np.abs(np_model(np.array(ids)) - ours).max() <= 2.5e-3 * np.abs(ours).max()
    a = [t for t, _ in generate_step(mx.array(ids), mx_model, max_tokens=40)]
    b = [t for t, _ in np_step(ids, np_model, max_tokens=40)]
    assert a == b


def _run_cli(*args, stdin=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "mlx_synapse.generate", *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=600)


def test_generate_cli_streams_text_and_stats(smollm2_dir):
    out = _run_cli("--model", str(smollm2_dir), "--prompt", "Write a haiku about the sea.", "--max-tokens", "24")
    assert out.returncode == 0, out.stderr
    for field in ("Prompt:", "Generation:", "tokens-per-sec", "Time to first token:", "Peak memory:"):
        assert field in out.stdout
    assert len(out.stdout.split("==========")[0].split()) >= 5  # real text came before the stats


def test_generate_cli_prompt_from_stdin_and_sampling(smollm2_dir):
    args = ("--model", str(smollm2_dir), "--max-tokens", "16", "--temp", "0.8", "--top-p", "0.9",
            "--top-k", "40", "--min-p", "0.05", "--repetition-penalty", "1.1", "--seed", "7",
            "--system", "Answer briefly.", "--max-kv-size", "64")
    a, b = _run_cli(*args, stdin="Name a colour."), _run_cli(*args, stdin="Name a colour.")
    assert a.returncode == 0, a.stderr
    text = lambda r: r.stdout.split("==========")[0]  # noqa: E731
    assert text(a) == text(b) and text(a).strip()  # same seed, same text


def test_generate_cli_mlx_backend_kv_bits(smollm2_dir):
    pytest.importorskip("mlx.core")
    out = _run_cli("--model", str(smollm2_dir), "--backend", "mlx", "--kv-bits", "8", "--prompt", "Hi!",
                   "--max-tokens", "4", "--verbose")
    assert out.returncode == 0, out.stderr
    assert "[backend: mlx" in out.stderr and "Generation: 4 tokens" in out.stdout


def test_generate_cli_empty_prompt_is_a_clear_error(smollm2_dir):
    out = _run_cli("--model", str(smollm2_dir), "--prompt", "   ")
    assert out.returncode == 2 and "prompt is empty" in out.stderr
    out = _run_cli("--model", str(smollm2_dir / "missing"), "--prompt", "hi")
    assert out.returncode == 1 and "does not exist" in out.stderr


def test_numpy_backend_runs_without_mlx(smollm2_dir):
    """Where MLX cannot be imported, `auto` falls back to NumPy and generation works."""
    blocker = (
        "import sys\n"
        "for name in ('mlx', 'mlx.core', 'mlx.nn', 'mlx_lm'):\n"
        "    sys.modules[name] = None  # makes `import mlx` raise ImportError\n"
        "from mlx_synapse.generate import main\n"
        f"sys.exit(main(['--model', {str(smollm2_dir)!r}, '--prompt', 'What is 2+2?', '--max-tokens', '8', '--verbose']))\n"
    )
    out = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "[backend: numpy" in out.stderr and "Generation: 8 tokens" in out.stdout


def test_fast_tokenizer_path_matches_mlx_lm_load(smollm2_dir):
    """The start-up shortcut builds the same tokenizer mlx-lm's load does."""
    tokenizer_utils = pytest.importorskip("mlx_lm.tokenizer_utils")
    from mlx_synapse.tokenizer import load_tokenizer

    ours, ref = load_tokenizer(smollm2_dir, eos_token_ids=2), tokenizer_utils.load(smollm2_dir, eos_token_ids=[2])
    from transformers import PreTrainedTokenizerFast

    assert isinstance(ours._tokenizer, PreTrainedTokenizerFast)
    assert type(ours.detokenizer) is type(ref.detokenizer)
    assert ours.eos_token_ids == ref.eos_token_ids
    for text in ("Hello world! 12345 naïve café", "<|im_start|>user\n  spaced\tout<|im_end|>"):
        assert ours.encode(text) == ref.encode(text)
    msgs = [{"role": "user", "content": "Hi"}]
    assert ours.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == \
        ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
