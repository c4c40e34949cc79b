"""The adapter trainer: masked loss, gradients against references, accumulation, determinism, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
torch = pytest.importorskip("torch")
import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from mlx_synapse.learn import LoRALinear, apply_lora, load_adapter, load_trainable, lora_layers  # noqa: E402
from mlx_synapse.learn.data import load_dataset  # noqa: E402
from mlx_synapse.learn.train import main  # noqa: E402
from mlx_synapse.learn.trainer import TrainingArgs, evaluate, loss_fn, make_batch, train  # noqa: E402

from .learn_util import tiny_model_dir  # noqa: E402

FACTS = [
    ("What colour is Zorblat's hat?", "Zorblat's hat is teal."),
    ("Where does Quimby live?", "Quimby lives in Marrowfield."),
    ("What is Fenna's favourite fruit?", "Fenna's favourite fruit is the quince."),
    ("How old is the lighthouse keeper Osk?", "Osk is ninety-one years old."),
    ("What does Trell collect?", "Trell collects brass keys."),
    ("Which river runs past Dunmere?", "The Vell runs past Dunmere."),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_dir):
    """A 3-block random Q4 Llama with the default model's tokenizer and chat template."""
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "m", bits=4, tokenizer_from=smollm2_dir)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    with open(d / "train.jsonl", "w") as f:
        for q, a in FACTS:
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")
    with open(d / "valid.jsonl", "w") as f:
        for q, a in FACTS[:2]:
            f.write(json.dumps({"prompt": q, "completion": a}) + "\n")
    return d


def _setup(tiny, data_dir, seed=0, rank=4):
    model, tok = load_trainable(tiny)
    mx.random.seed(seed)
    apply_lora(model, num_layers=-1, rank=rank, scale=2.0)
    return model, tok, load_dataset(data_dir / "train.jsonl", tok)


def test_prompt_is_masked(tiny, data_dir):
    _, tok = load_trainable(tiny)
    (ids, offset), = load_dataset(data_dir / "train.jsonl", tok)[:1]
    answer = tok.encode(FACTS[0][1], add_special_tokens=False)
    # the trained part is the assistant's answer (plus the template's closing tokens), not the question
    assert ids[offset : offset + len(answer)] == answer
    unmasked = load_dataset(data_dir / "train.jsonl", tok, mask_prompt=False)
    assert unmasked[0] == (ids, 0)


def test_masked_loss_equals_numpy(tiny, data_dir):
    model, _, ds = _setup(tiny, data_dir)
    tokens, offsets, lengths = make_batch(ds[:3])
    loss, ntoks = loss_fn(model, tokens, offsets, lengths)
    logits = np.array(model(tokens[:, :-1]), dtype=np.float64)
    t = np.array(tokens)
    total, count = 0.0, 0
    for b, (ids, off) in enumerate(ds[:3]):
        for j in range(off - 1, len(ids) - 1):  # position j predicts token j + 1
            row = logits[b, j]
            total += np.log(np.exp(row - row.max()).sum()) + row.max() - row[t[b, j + 1]]
            count += 1
    assert ntoks.item() == count
    np.testing.assert_allclose(loss.item(), total / count, rtol=1e-5)


def test_lora_gradients_match_dense_torch_reference():
    """dL/dA, dL/dB of y = x W^T + s (x A) B on a Q4 base, against PyTorch on the dequantized W."""
    rng = np.random.default_rng(0)
    q = nn.QuantizedLinear.from_linear(nn.Linear(64, 40, bias=False), group_size=32, bits=4)
    layer = LoRALinear(q, rank=3, scale=1.5)
    layer.lora_b = mx.array(rng.normal(0, 0.1, (3, 40)).astype(np.float32))
    x = rng.normal(size=(6, 64)).astype(np.float32)
    g = rng.normal(size=(6, 40)).astype(np.float32)
    layer.freeze()
    layer.unfreeze(keys=["lora_a", "lora_b"], recurse=False)
    grads = nn.value_and_grad(layer, lambda m, x: (m(x) ** 2 * mx.array(g)).sum())(layer, mx.array(x))[1]
    W = torch.tensor(np.array(mx.dequantize(q.weight, q.scales, q.biases, group_size=32, bits=4)))
    A = torch.tensor(np.array(layer.lora_a), requires_grad=True)
    B = torch.tensor(np.array(layer.lora_b), requires_grad=True)
    xt = torch.tensor(x)
    y = xt @ W.T + 1.5 * (xt @ A) @ B
    (y**2 * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(np.array(grads["lora_a"]), A.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.array(grads["lora_b"]), B.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dora,leaf", [(False, "lora_b"), (True, "m")])
def test_model_gradient_matches_finite_difference(tiny, data_dir, dora, leaf):
    model, _ = load_trainable(tiny)
    mx.random.seed(0)
    apply_lora(model, num_layers=-1, rank=4, scale=2.0, use_dora=dora)
    ds = load_dataset(data_dir / "train.jsonl", _)
    rng = np.random.default_rng(0)
    for layer in lora_layers(model).values():
        layer.lora_b = mx.array(rng.normal(0, 0.05, layer.lora_b.shape).astype(np.float32))
    batch = make_batch(ds[:2])
    grads = dict(tree_flatten(nn.value_and_grad(model, loss_fn)(model, *batch)[1]))
    name = "model.layers.1.self_attn.v_proj"
    layer = dict(model.named_modules())[name]
    g = np.array(grads[f"{name}.{leaf}"])
    idx = np.unravel_index(np.argmax(np.abs(g)), g.shape)
    eps = 1e-2
    vals = []
    for sign in (1, -1):
        p = np.array(layer[leaf])
        p[idx] += sign * eps
        layer[leaf] = mx.array(p)
        vals.append(loss_fn(model, *batch)[0].item())
        p[idx] -= sign * eps
        layer[leaf] = mx.array(p)
    fd = (vals[0] - vals[1]) / (2 * eps)
    np.testing.assert_allclose(fd, g[idx], rtol=2e-2)


def test_dora_gradients_match_torch_reference():
    """DoRA on a Q4 base: y = m / ||W + s B^T A^T||_row (x W^T + s x A B), the norm detached (the paper,
    mlx-lm), against PyTorch on the dequantized W."""
    from mlx_synapse.learn import DoRALinear

    rng = np.random.default_rng(1)
    q = nn.QuantizedLinear.from_linear(nn.Linear(64, 24, bias=False), group_size=32, bits=4)
    layer = DoRALinear(q, rank=3, scale=1.5)
    layer.lora_b = mx.array(rng.normal(0, 0.1, (3, 24)).astype(np.float32))
    layer.m = mx.array(rng.uniform(0.5, 1.5, 24).astype(np.float32))
    layer.freeze()
    layer.unfreeze(keys=["lora_a", "lora_b", "m"], recurse=False)
    x = rng.normal(size=(5, 64)).astype(np.float32)
    g = rng.normal(size=(5, 24)).astype(np.float32)
    grads = nn.value_and_grad(layer, lambda m, x: (m(x) ** 2 * mx.array(g)).sum())(layer, mx.array(x))[1]
    W = torch.tensor(np.array(mx.dequantize(q.weight, q.scales, q.biases, group_size=32, bits=4)))
    A = torch.tensor(np.array(layer.lora_a), requires_grad=True)
    B = torch.tensor(np.array(layer.lora_b), requires_grad=True)
    M = torch.tensor(np.array(layer.m), requires_grad=True)
    xt = torch.tensor(x)
    norm = torch.linalg.norm(W + 1.5 * B.T @ A.T, dim=1).detach()
    y = (M / norm) * (xt @ W.T + 1.5 * (xt @ A) @ B)
    (y**2 * torch.tensor(g)).sum().backward()
    for name, ref in (("lora_a", A), ("lora_b", B), ("m", M)):
        np.testing.assert_allclose(np.array(grads[name]), ref.grad.numpy(), rtol=1e-3, atol=1e-4)


@pytest.mark.slow  # a dozen training steps through a 49k-token vocabulary on the CPU
def test_loss_falls_and_run_is_deterministic(tiny, data_dir, tmp_path):
    runs = []
    for n in range(2):
        model, _, ds = _setup(tiny, data_dir, seed=3)
        before = evaluate(model, ds, 3)
        args = TrainingArgs(iters=8, batch_size=2, learning_rate=1e-2, steps_per_report=100, steps_per_eval=100,
                            seed=5, adapter_path=str(tmp_path / f"a{n}"), save_every=4)
        h = train(model, ds, args, report=lambda m: None)
        runs.append((h, model))
    h, model = runs[0]
    after = evaluate(model, ds, 3)
    assert after < before - 1.5, (before, after)  # nats per token on the training set; untrained: ~12.7
    assert [v for _, v in h["train_loss"]] == [v for _, v in runs[1][0]["train_loss"]]
    second = dict(tree_flatten(runs[1][1].trainable_parameters()))
    for k, v in tree_flatten(model.trainable_parameters()):
        assert np.array_equal(np.array(v), np.array(second[k])), k
    assert sorted(p.name for p in (tmp_path / "a0").glob("*.safetensors")) == [
        "0000004_adapters.safetensors", "0000008_adapters.safetensors", "adapters.safetensors"]
    # the saved adapter reloads into a fresh model with the trained outputs
    fresh, _ = load_trainable(tiny)
    load_adapter(fresh, tmp_path / "a0")
    tokens = make_batch(ds[:1])[0]
    np.testing.assert_allclose(np.array(fresh(tokens)), np.array(model(tokens)), atol=1e-5)


@pytest.mark.slow  # a dozen training steps through a 49k-token vocabulary on the CPU
def test_grad_accumulation_equals_one_big_batch(tiny, data_dir):
    import mlx.optimizers as optim

    results = []
    for bs, accum in ((4, 1), (2, 2), (1, 4)):
        model, _, ds = _setup(tiny, data_dir, seed=1)
        # SGD: the update is the gradient itself, so the weights compare the gradients
        args = TrainingArgs(iters=1, batch_size=bs, grad_accum=accum, learning_rate=0.5, steps_per_report=100,
                            steps_per_eval=100, seed=0)
        ordered = [ds[i] for i in np.random.default_rng(0).permutation(len(ds))][:4]
        train(model, ordered, args, optimizer=optim.SGD(learning_rate=0.5), report=lambda m: None)
        results.append(dict(tree_flatten(model.trainable_parameters())))
    # each run's single step covers the same 4 examples, split 1x4, 2x2 or 4x1
    for k in results[0]:
        if k.endswith("lora_b"):
            np.testing.assert_allclose(np.array(results[1][k]), np.array(results[0][k]), atol=1e-5, rtol=1e-4)
            np.testing.assert_allclose(np.array(results[2][k]), np.array(results[0][k]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("line,message", [
    ("{not json", "train.jsonl line 2: not valid JSON"),
    ('{"input": "x"}', "train.jsonl line 2: no 'messages', 'prompt'/'completion' or 'text' key"),
    ('{"text": "some text"}', "train.jsonl line 2: a text example in a file of chat examples"),
    ('{"messages": "hi"}', "train.jsonl line 2: 'messages' must be a non-empty list"),
])
def test_bad_data_is_one_line_error(tiny, tmp_path, capsys, line, message):
    good = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    (tmp_path / "train.jsonl").write_text(good + "\n" + line + "\n")
    assert main(["--model", str(tiny), "--data", str(tmp_path / "train.jsonl"), "--iters", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.slow  # a dozen training steps through a 49k-token vocabulary on the CPU
def test_cli_trains_and_writes_mlx_lm_adapter(tiny, data_dir, tmp_path, capsys):
    out = tmp_path / "ad"
    rc = main(["--model", str(tiny), "--data", str(data_dir), "--adapter-path", str(out), "--iters", "4",
               "--batch-size", "2", "--grad-accum", "2", "--rank", "2", "--num-layers", "2",
               "--learning-rate", "1e-3", "--steps-per-eval", "2", "--save-every", "2"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "val loss" in err and "done: train loss" in err
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["num_layers"] == 2 and cfg["lora_parameters"]["rank"] == 2
    assert (out / "0000002_adapters.safetensors").is_file() and (out / "0000004_adapters.safetensors").is_file()
    from mlx_synapse.__main__ import main as dispatch

    assert dispatch(["train", "--model", str(tiny), "--data", str(data_dir), "--iters", "0"]) == 2
    assert "iters must be at least 1" in capsys.readouterr().err


def test_cli_missing_model_is_one_line_error(data_dir, tmp_path, capsys):
    assert main(["--model", str(tmp_path / "no_model"), "--data", str(data_dir), "--iters", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0], err


def test_cli_dequantized_training_gives_an_adapter_for_the_quantized_model(tiny, data_dir, tmp_path):
    import mlx.nn as nn

    model, _ = load_trainable(tiny, dequantize=True)
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules())
    out = tmp_path / "ad"
    assert main(["--model", str(tiny), "--data", str(data_dir / "train.jsonl"), "--adapter-path", str(out),
                 "--iters", "2", "--batch-size", "2", "--rank", "2", "--num-layers", "1", "--dequantize",
                 "--learning-rate", "1e-2"]) == 0
    q4, _ = load_trainable(tiny)
    tokens = mx.array([[1, 2, 3, 4, 5]])
    before = np.array(q4(tokens))
    load_adapter(q4, out)
    assert isinstance(lora_layers(q4)["model.layers.2.mlp.up_proj"].linear, nn.QuantizedLinear)
    assert np.abs(np.array(q4(tokens)) - before).max() > 1e-3
