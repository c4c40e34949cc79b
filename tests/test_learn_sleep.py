"""Sleep's gate: a bad consolidation is rolled back bit for bit, a good one kept; recall from weights."""

from __future__ import annotations

import math

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
from mlx.utils import tree_flatten  # noqa: E402

from mlx_synapse.generate import generate_step  # noqa: E402
from mlx_synapse.learn import apply_lora, load_trainable  # noqa: E402
from mlx_synapse.learn.data import tokenize  # noqa: E402
from mlx_synapse.learn.ewc import EWC  # noqa: E402
from mlx_synapse.learn.sleep import Gate, answer_recall, consolidate  # noqa: E402
from mlx_synapse.learn.trainer import TrainingArgs, train  # noqa: E402

from .learn_util import tiny_model_dir  # noqa: E402

FACTS = [("What colour is Zorblat's hat?", "Teal."), ("Where does Quimby live?", "In Marrowfield."),
         ("What does Trell collect?", "Brass keys."), ("Which river runs past Dunmere?", "The Vell.")]
GENERAL = ["The sun rose over the quiet harbour and the boats went out.",
           "She opened the old book and began to read aloud to the children."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_dir):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "m", bits=4, seed=7, tokenizer_from=smollm2_dir)


def _setup(tiny):
    model, tok = load_trainable(tiny)
    mx.random.seed(0)
    apply_lora(model, num_layers=-1, rank=4, scale=2.0)
    chat = [tokenize({"prompt": q, "completion": a}, "completions", tok) for q, a in FACTS]
    general = [tokenize({"text": t}, "text", tok) for t in GENERAL]
    pairs = [(ids[:off], ids[off:]) for ids, off in chat]
    return model, chat, general, pairs


def _params(model):
    return {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}


def test_answer_recall_equals_greedy_generation(tiny):
    model, _, _, pairs = _setup(tiny)
    prompt = pairs[0][0]
    greedy = [t for t, _ in generate_step(mx.array(prompt), model, max_tokens=4)]
    wrong = greedy[:3] + [(greedy[3] + 1) % 1000]
    assert answer_recall(model, [(prompt, greedy)]) == 1.0
    assert answer_recall(model, [(prompt, wrong), (prompt, greedy[:2])]) == 0.5


@pytest.mark.slow  # a dozen training steps through a 49k-token vocabulary on the CPU
def test_bad_sleep_is_rolled_back_bit_for_bit(tiny):
    model, chat, general, pairs = _setup(tiny)
    # an adapter that already knows the general text (a random base model knows none): the previous one
    train(model, general, TrainingArgs(iters=15, batch_size=2, learning_rate=2e-2, steps_per_report=100,
                                       steps_per_eval=100), report=lambda m: None)
    before, logits = _params(model), np.array(model(mx.array([chat[0][0]])))
    # a bad sleep: the learning rate x1000 of a good one
    args = TrainingArgs(iters=3, batch_size=2, learning_rate=1.0, steps_per_report=100, steps_per_eval=100)
    rep = consolidate(model, chat, args, lambda m: answer_recall(m, pairs), general,
                      Gate(min_recall=0.0, max_ppl_drift=0.01))
    assert not rep.accepted and ("perplexity drift" in rep.reason or "diverged" in rep.reason), rep.reason
    assert rep.ppl_after > 1.01 * rep.ppl_before or not math.isfinite(rep.ppl_after)
    after = _params(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert np.array_equal(np.array(model(mx.array([chat[0][0]]))), logits)
    assert "rolled back" in rep.summary()


@pytest.mark.slow  # a dozen training steps through a 49k-token vocabulary on the CPU
def test_good_sleep_is_kept_and_recall_gate_can_reject(tiny):
    model, chat, general, pairs = _setup(tiny)
    before = _params(model)
    args = TrainingArgs(iters=3, batch_size=2, learning_rate=1e-3, steps_per_report=100, steps_per_eval=100)
    ewc = EWC(lam=0.1)
    rep = consolidate(model, chat, args, lambda m: answer_recall(m, pairs), general,
                      Gate(min_recall=0.0, max_ppl_drift=math.inf), penalty=ewc.penalty)
    assert rep.accepted and rep.reason == "gate passed"
    kept = _params(model)
    assert any(not np.array_equal(before[k], kept[k]) for k in before)
    # the same training against an unreachable recall threshold is undone
    rep2 = consolidate(model, chat, args, lambda m: 0.5, general, Gate(min_recall=0.9, max_ppl_drift=math.inf))
    assert not rep2.accepted and "recall 0.50 < 0.90" in rep2.reason
    assert all(np.array_equal(kept[k], v) for k, v in _params(model).items())


def _nudge(model, seed=1):
    """Give every adapter a non-zero update, as after training."""
    from mlx_synapse.learn.lora import lora_layers

    mx.random.seed(seed)
    for m in lora_layers(model).values():
        m.lora_b = 0.05 * mx.random.normal(m.lora_b.shape)


def test_adapters_off_gives_the_base_logits_exactly(tiny):
    from mlx_synapse.learn import remove_lora
    from mlx_synapse.learn.lora import adapters_off

    for dora in (False, True):
        model, chat, _, _ = _setup(tiny)
        x = mx.array([chat[0][0]])
        remove_lora(model)
        base = np.array(model(x))
        apply_lora(model, num_layers=-1, rank=4, scale=2.0, use_dora=dora)
        _nudge(model)
        on = np.array(model(x))
        with adapters_off(model):
            off = np.array(model(x))
        again = np.array(model(x))
        assert np.abs(on - base).max() > 1e-3  # the adapter does something
        assert np.array_equal(off, base)  # byte for byte, DoRA's magnitude included
        assert np.array_equal(again, on)  # and it comes back on
        remove_lora(model)


def test_distill_loss_is_zero_at_the_base_and_positive_after(tiny):
    from mlx_synapse.learn.trainer import base_log_probs, distill_loss, make_batch

    model, _, general, _ = _setup(tiny)
    tokens, _, lengths = make_batch(general)
    kl0, n = distill_loss(model, tokens, lengths, base_log_probs(model, tokens))
    assert abs(kl0.item()) < 1e-6 and n.item() == sum(len(ids) - 1 for ids, _ in general)
    base = base_log_probs(model, tokens)
    _nudge(model)
    kl1, _ = distill_loss(model, tokens, lengths, base)
    # by hand in NumPy: mean over real positions of sum_v p_base (log p_base - log p_adapted)
    lg = np.array(model(tokens[:, :-1]).astype(mx.float32), np.float64)
    lq = lg - np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1, keepdims=True)) - lg.max(-1, keepdims=True)
    lp = np.array(base, np.float64)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    mask = np.arange(1, tokens.shape[1])[None] < np.array(lengths)[:, None]
    assert kl1.item() > 1e-4
    assert kl1.item() == pytest.approx((kl * mask).sum() / mask.sum(), rel=1e-4)


def test_distilled_replay_keeps_general_text_closer_to_the_base(tiny):
    """Same facts, same steps: replay held to the base (KL) leaves general text nearer the base model
    than replay fitted by cross-entropy does."""
    from mlx_synapse.learn import remove_lora
    from mlx_synapse.learn.trainer import base_log_probs, distill_loss, make_batch

    drift = {}
    for distill in (0.0, 1.0):
        model, chat, general, _ = _setup(tiny)
        tokens, _, lengths = make_batch(general)
        base = base_log_probs(model, tokens)
        hist = train(model, chat, TrainingArgs(iters=12, batch_size=3, learning_rate=1e-3, steps_per_report=100,
                                               steps_per_eval=100),
                     replay_set=general, replay_per_batch=1, distill=distill, report=lambda m: None)
        assert all(math.isfinite(v) for _, v in hist["train_loss"])
        drift[distill] = distill_loss(model, tokens, lengths, base)[0].item()
        remove_lora(model)
    assert drift[1.0] < 0.5 * drift[0.0], drift  # measured: 0.24 vs 1.87


def test_should_stop_ends_training_at_that_step(tiny):
    model, chat, _, _ = _setup(tiny)
    asked = []
    hist = train(model, chat, TrainingArgs(iters=20, batch_size=2, learning_rate=1e-3, steps_per_report=100,
                                           steps_per_eval=4),
                 should_stop=lambda s: asked.append(s) or s >= 8, report=lambda m: None)
    assert asked == [4, 8] and hist["stopped_at"] == 8 and len(hist["train_loss"]) == 8


def test_consolidate_stops_at_the_first_gate_pass(tiny):
    model, chat, general, _ = _setup(tiny)
    calls = []

    def recall(m):
        calls.append(1)
        return 1.0 if len(calls) >= 3 else 0.0  # before training, first check, second check passes

    rep = consolidate(model, chat, TrainingArgs(iters=40, batch_size=2, learning_rate=1e-4, steps_per_report=100),
                      recall, general, Gate(min_recall=0.9, max_ppl_drift=1.0), check_every=5)
    assert rep.accepted and rep.steps == 10 and rep.recall_after == 1.0 and len(calls) == 3
