"""The reader's trainer: a tiny run lowers the validation loss and writes an adapter the
reader loads; bad arguments are one line and exit status 2."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mlx.core")

from mlx_synapse.reader.train import main  # noqa: E402

from .learn_util import tiny_model_dir  # noqa: E402


def test_tiny_training_run_lowers_validation_loss(tmp_path, smollm2_dir):
    from mlx_synapse.learn.bank_sleep import general_text_path

    try:
        general_text_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    model = tiny_model_dir(tmp_path / "m", bits=4, seed=0, tokenizer_from=smollm2_dir)
    out = tmp_path / "out"
    rc = main(["--out", str(out), "--model", str(model), "--iters", "8", "--examples", "24", "--valid", "8",
               "--batch-size", "4", "--ppl-tokens", "128", "--steps-per-eval", "4", "--learning-rate", "2e-3",
               "--max-ppl-drift", "100"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    losses = [v for _, v in report["history"]["val_loss"]]
    assert losses[0] > losses[-1] + 0.1, losses
    assert report["adapter"]["best_step"] > 0
    # the base model's perplexity once the adapter is removed is the one measured before training
    assert report["ppl_off_after_removal"] == report["base"]["ppl"]
    from mlx_synapse.loader import load_model
    from mlx_synapse.reader import Reader

    Reader(load_model(model)[0], out)  # what was written loads as a reader


@pytest.mark.parametrize("argv, words", [
    (["--iters", "0"], "--iters must be at least 1"),
    (["--replay-share", "1"], "--replay-share"),
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--general-text", "/nonexistent/wiki.txt"], "general text not found"),
])
def test_bad_arguments_are_one_line(tmp_path, capsys, argv, words):
    assert main(["--out", str(tmp_path / "o")] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and "Traceback" not in err
