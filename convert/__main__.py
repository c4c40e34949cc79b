"""``python -m mlx_synapse.convert SRC --out DIR``: import a checkpoint.

SRC is a Hugging Face directory or hub id (safetensors or PyTorch .bin/.pt),
or a ``.gguf`` file (Ollama, LM Studio, llama.cpp).
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mlx_synapse.convert",
        description="Convert a Hugging Face/PyTorch checkpoint or a GGUF file to an MLX model directory.",
    )
    p.add_argument("source", nargs="?", help="HF directory, hub id, or .gguf file")
    p.add_argument("--hf-path", dest="hf_path", default=None, help="same as SOURCE (mlx-lm spelling)")
    p.add_argument("--out", "--mlx-path", dest="out", required=True, help="output directory")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="float type of the written weights (default: the source's)")
    p.add_argument("-q", "--quantize", action="store_true",
                   help="affine-quantize float weights (GGUF: K-quant/IQ4/float matrices; "
                        "Q4_0/Q4_1/Q8_0 keep their blocks)")
    p.add_argument("--q-bits", type=int, default=4)
    p.add_argument("--q-group-size", type=int, default=64)
    p.add_argument("--dequantize", action="store_true", help="GGUF: write float weights instead of any blocks")
    p.add_argument("--revision", default=None, help="hub revision")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    source = args.source or args.hf_path
    if not source:
        print("error: give a SOURCE (HF directory, hub id or .gguf file).", file=sys.stderr)
        return 2
    from pathlib import Path

    if Path(args.out).exists() and any(Path(args.out).iterdir()):
        print(f"error: --out {args.out} exists and is not empty; choose a new directory.", file=sys.stderr)
        return 2
    try:
        if str(source).endswith(".gguf"):
            if args.quantize and args.dequantize:
                print("error: -q and --dequantize contradict each other; choose one.", file=sys.stderr)
                return 2
            from .gguf import convert_gguf

            out = convert_gguf(source, args.out, dtype=args.dtype, dequantize=args.dequantize,
                               quantize=args.quantize, q_bits=args.q_bits, q_group_size=args.q_group_size,
                               progress=not args.no_progress, log=lambda line: print(f"[convert] {line}"))
        else:
            from .hf import convert_hf

            out = convert_hf(source, args.out, dtype=args.dtype, quantize=args.quantize, q_bits=args.q_bits,
                             q_group_size=args.q_group_size, revision=args.revision,
                             progress=not args.no_progress)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in ("mlx", "mlx_lm"):
            print(f"error: converting {source} needs MLX ({e}); pip install mlx ('mlx[cpu]' on Linux), "
                  "or convert a .gguf file, which needs NumPy only.", file=sys.stderr)
        else:
            print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"[convert] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
