"""Stream a reply from the default model with the public API.

    python examples/generate_text.py "Why is the sky blue?"
"""

import sys

from mlx_synapse import load, stream_generate
from mlx_synapse.generate import build_prompt

question = " ".join(sys.argv[1:]) or "Why is the sky blue?"
model, tokenizer = load()  # SmolLM2-135M-Instruct, on the fastest backend for this machine
prompt = build_prompt(tokenizer, question, system="Answer in two sentences.")
last = None
for last in stream_generate(model, tokenizer, prompt, max_tokens=120, temp=0.0):
    print(last.text, end="", flush=True)
print(f"\n[{model.backend}: {last.generation_tps:.1f} tokens/s, first token after {last.ttft:.2f} s]")
