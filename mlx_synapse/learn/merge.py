"""Merging adapters and task vectors: TIES, DARE and linear averaging.

A task vector is what fine-tuning added to the base weights, one ``(out, in)``
delta per layer. A LoRA adapter's is ``scale * B.T @ A.T`` per wrapped layer, so
adapters are merged in that dense space, one layer at a time:

- ``linear``: ``lam * sum_i w_i * delta_i`` (weights default to 1/n: the mean).
- ``ties`` (Yadav et al., 2023): trim each delta to its top ``density`` share by
  magnitude (per tensor), elect a sign per entry (the sign of the sum of the
  trimmed values), average only the trimmed values that agree with it (a
  disjoint mean: entries that are zero or disagree do not count), times ``lam``.
- ``dare_linear`` / ``dare_ties`` (Yu et al., 2024): first drop each entry with
  probability ``p = 1 - density`` and rescale the survivors by ``1 / (1 - p)``
  (seeded per source and tensor), then average linearly, or elect signs and take
  the disjoint mean as TIES does (no magnitude trim after the random one).

The merged deltas are full rank in general. :func:`refactor` turns them back into
a rank-``r`` LoRA adapter by truncated SVD (the best rank-``r`` approximation in
Frobenius norm) and reports the relative error it leaves per layer and overall;
:func:`apply_deltas` instead adds them to the base weights exactly (a fused model).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

METHODS = ("linear", "ties", "dare_linear", "dare_ties")


def _check_density(density: float) -> None:
    if not (0.0 < density <= 1.0):
        raise ValueError(f"[merge] density must be in (0, 1] but got {density}; 0.2 keeps the top 20%.")


def trim(delta: np.ndarray, density: float) -> np.ndarray:
    """Keep the ``ceil(density * n)`` largest-magnitude entries, zero the rest.

    Entries tied with the k-th largest magnitude are all kept, so the result does
    not depend on the order of equal values."""
    _check_density(density)
    flat = np.abs(delta).ravel()
    k = math.ceil(density * flat.size - 1e-9)
    if k >= flat.size:
        return delta.copy()
    threshold = np.partition(flat, flat.size - k)[flat.size - k]  # the k-th largest magnitude
    return np.where(np.abs(delta) >= threshold, delta, 0).astype(delta.dtype)


def elect_and_mean(deltas: Sequence[np.ndarray]) -> np.ndarray:
    """TIES's sign election and disjoint mean over already sparsified deltas."""
    stack = np.stack([np.asarray(d, np.float64) for d in deltas])  # (n, ...)
    sign = np.sign(stack.sum(axis=0))
    agree = (np.sign(stack) == sign) & (stack != 0)
    count = agree.sum(axis=0)
    total = np.where(agree, stack, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def ties(deltas: Sequence[np.ndarray], density: float = 0.2, lam: float = 1.0) -> np.ndarray:
    """TIES merge of same-shaped deltas: trim to ``density``, elect signs, disjoint mean, times ``lam``."""
    out = lam * elect_and_mean([trim(d, density) for d in deltas])
    return out.astype(np.result_type(*deltas))


def dare(delta: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Drop each entry with probability ``p``, rescale the survivors by ``1 / (1 - p)`` (unbiased)."""
    if not (0.0 <= p < 1.0):
        raise ValueError(f"[merge] DARE's drop probability must be in [0, 1) but got {p}.")
    keep = rng.random(delta.shape) >= p
    return np.where(keep, delta / (1.0 - p), 0).astype(delta.dtype)


def linear(deltas: Sequence[np.ndarray], weights: Optional[Sequence[float]] = None, lam: float = 1.0) -> np.ndarray:
    """``lam * sum_i w_i delta_i``; ``weights`` default to ``1/n`` each (the mean)."""
    w = [1.0 / len(deltas)] * len(deltas) if weights is None else list(weights)
    out = lam * sum(wi * np.asarray(d, np.float64) for wi, d in zip(w, deltas))
    return out.astype(np.result_type(*deltas))


def _rng(seed: int, source: int, name: str) -> np.random.Generator:
    # one stream per (seed, source, tensor): the mask does not depend on the order tensors are visited in
    return np.random.default_rng([seed, source, zlib.crc32(name.encode())])


def merge_tensors(deltas: Sequence[np.ndarray], method: str = "ties", density: float = 0.2, lam: float = 1.0,
                  weights: Optional[Sequence[float]] = None, seed: int = 0, name: str = "") -> np.ndarray:
    """Merge one tensor's deltas (one per source) with ``method`` (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"[merge] unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if len(deltas) < 1:
        raise ValueError("[merge] nothing to merge: give at least one adapter or task vector.")
    shapes = {tuple(d.shape) for d in deltas}
    if len(shapes) > 1:
        raise ValueError(f"[merge] {name or 'a tensor'} has different shapes in the sources ({sorted(shapes)}); "
                         "they were trained on different base models.")
    _check_density(density)
    if weights is not None and len(weights) != len(deltas):
        raise ValueError(f"[merge] {len(weights)} weights for {len(deltas)} sources; give one weight per source.")
    if method.startswith("dare"):
        deltas = [dare(np.asarray(d), 1.0 - density, _rng(seed, i, name)) for i, d in enumerate(deltas)]
    if method in ("linear", "dare_linear"):
        return linear(deltas, weights, lam)
    if method == "ties":
        return ties(deltas, density, lam)
    return (lam * elect_and_mean(deltas)).astype(np.result_type(*deltas))


def merge_task_vectors(vectors: Sequence[Dict[str, np.ndarray]], **kw) -> Dict[str, np.ndarray]:
    """Merge task vectors (name -> delta); a name missing from a source counts as a zero delta there."""
    names = sorted(set().union(*[v.keys() for v in vectors]))
    out = {}
    for name in names:
        shape = next(v[name].shape for v in vectors if name in v)
        dtype = next(v[name].dtype for v in vectors if name in v)
        out[name] = merge_tensors([v.get(name, np.zeros(shape, dtype)) for v in vectors], name=name, **kw)
    return out


# ---------------------------------------------------------------------------------------- LoRA adapters


def adapter_deltas(path: Union[str, Path]) -> Tuple[dict, Dict[str, np.ndarray]]:
    """(config, {layer path: dense delta (out, in), float32}) of a LoRA adapter directory."""
    from .adapters import read_adapter

    config, weights = read_adapter(path)
    if config.get("fine_tune_type", "lora") != "lora":
        raise ValueError(f"[merge] {path} is a {config['fine_tune_type']} adapter; only LoRA adapters merge "
                         "(DoRA's magnitudes are not a delta).")
    scale = float(config["lora_parameters"]["scale"])
    layers = sorted({k.rsplit(".", 1)[0] for k in weights})
    deltas = {}
    for layer in layers:
        a, b = weights.get(f"{layer}.lora_a"), weights.get(f"{layer}.lora_b")
        if a is None or b is None:
            raise ValueError(f"[merge] {path} has {layer} without both lora_a and lora_b; the file is incomplete.")
        a64, b64 = np.array(a, np.float64), np.array(b, np.float64)  # (in, r), (r, out)
        deltas[layer] = (scale * (b64.T @ a64.T)).astype(np.float32)
    return config, deltas


def refactor(deltas: Dict[str, np.ndarray], rank: int, scale: float = 1.0) -> Tuple[Dict[str, np.ndarray], dict]:
    """Rank-``rank`` LoRA factors of each delta by truncated SVD.

    Returns:
        ``({layer.lora_a: (in, r), layer.lora_b: (r, out)}, errors)`` with
        ``scale * B.T @ A.T`` the best rank-r approximation of each delta;
        ``errors``: ``{"per_layer": {layer: ||D - D_r|| / ||D||}, "overall": same over all layers}``
        (Frobenius norms; 0 for an all-zero delta).
    """
    if rank < 1:
        raise ValueError(f"[merge] rank must be at least 1 but got {rank}.")
    if scale == 0:
        raise ValueError("[merge] the adapter scale must not be 0.")
    out, per_layer, err_sq, norm_sq = {}, {}, 0.0, 0.0
    for layer, d in deltas.items():
        d64 = np.asarray(d, np.float64) / scale
        u, s, vt = np.linalg.svd(d64, full_matrices=False)
        r = min(rank, s.size)
        root = np.sqrt(s[:r])
        a = np.zeros((d.shape[1], rank))
        b = np.zeros((rank, d.shape[0]))
        a[:, :r] = vt[:r].T * root  # (in, r)
        b[:r] = (u[:, :r] * root).T  # (r, out)
        out[f"{layer}.lora_a"], out[f"{layer}.lora_b"] = a.astype(np.float32), b.astype(np.float32)
        tail, full = float(np.sum(s[r:] ** 2)), float(np.sum(s ** 2))
        per_layer[layer] = math.sqrt(tail / full) if full > 0 else 0.0
        err_sq += tail * scale * scale
        norm_sq += full * scale * scale
    return out, {"per_layer": per_layer, "overall": math.sqrt(err_sq / norm_sq) if norm_sq > 0 else 0.0}


def merge_adapters(paths: Sequence[Union[str, Path]], method: str = "ties", density: float = 0.2,
                   lam: float = 1.0, weights: Optional[Sequence[float]] = None,
                   seed: int = 0) -> Tuple[Dict[str, np.ndarray], dict]:
    """Merge LoRA adapter directories in the dense delta space.

    Returns:
        ``(deltas, config)``: the merged ``{layer path: (out, in)}`` deltas and an
        mlx-lm config for them (the first adapter's, over the union of layers and keys).
    """
    if len(paths) < 2:
        raise ValueError(f"[merge] give at least two adapters to merge, got {len(paths)}.")
    if weights is not None and len(weights) != len(paths):
        raise ValueError(f"[merge] {len(weights)} weights for {len(paths)} adapters; give one weight per adapter.")
    loaded = [adapter_deltas(p) for p in paths]
    merged = merge_task_vectors([d for _, d in loaded], method=method, density=density, lam=lam,
                                weights=weights, seed=seed)
    config = json.loads(json.dumps(loaded[0][0]))
    params = config["lora_parameters"]
    params["keys"] = sorted(set().union(*[set(c["lora_parameters"].get("keys") or []) for c, _ in loaded])) or None
    config["num_layers"] = max(int(c["num_layers"]) for c, _ in loaded)
    # every (block, key) of the output's layout gets a tensor, zero where no source had one
    blocks = sorted({int(k.split(".")[2]) for k in merged})
    if params["keys"] and blocks:
        top = blocks[-1]
        for i in range(top + 1 - config["num_layers"], top + 1):
            for key in params["keys"]:
                name = f"model.layers.{i}.{key}"
                if name not in merged:
                    like = next(v for k, v in merged.items() if k.endswith("." + key))
                    merged[name] = np.zeros_like(like)
    config["merge"] = {"method": method, "density": density, "lam": lam, "seed": seed,
                       "weights": list(weights) if weights is not None else None,
                       "sources": [str(p) for p in paths]}
    return merged, config


def save_merged_adapter(deltas: Dict[str, np.ndarray], config: dict, out: Union[str, Path],
                        rank: int) -> dict:
    """Write ``deltas`` as a rank-``rank`` LoRA adapter (truncated SVD) to directory ``out``.

    Returns the SVD's reconstruction errors (see :func:`refactor`), also written to the config."""
    import mlx.core as mx

    from .adapters import CONFIG_NAME, WEIGHTS_NAME

    scale = float(config["lora_parameters"]["scale"])
    factors, errors = refactor(deltas, rank, scale)
    config = json.loads(json.dumps(config))
    config["lora_parameters"]["rank"] = rank
    config.setdefault("merge", {})["svd_rank"] = rank
    config["merge"]["svd_relative_error"] = errors["overall"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / WEIGHTS_NAME), {k: mx.array(v) for k, v in factors.items()})
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return errors


def apply_deltas(model, deltas: Dict[str, np.ndarray], dequantize: bool = False) -> int:
    """Add each ``(out, in)`` delta to the weight of the layer at its path (a quantized layer is
    dequantized, added to and re-quantized unless ``dequantize``). Returns how many layers changed."""
    import mlx.core as mx
    from mlx.utils import tree_unflatten

    from .lora import _check_model, _dims, _fused_linear

    _check_model(model)
    mods = dict(model.named_modules())
    missing = [p for p in deltas if p not in mods]
    if missing:
        raise ValueError(f"[merge] the model has no layer {missing[0]!r}; the deltas are for another base model.")
    per_block: Dict[int, list] = {}
    for path, d in deltas.items():
        base = mods[path]
        in_dims, out_dims = _dims(base)
        if tuple(d.shape) != (out_dims, in_dims):
            raise ValueError(f"[merge] the delta for {path} has shape {tuple(d.shape)} but the layer's weight is "
                             f"{(out_dims, in_dims)}; the deltas are for another base model.")
        fused = _fused_linear(base, lambda w, d=d: w + mx.array(d).astype(w.dtype), dequantize)
        per_block.setdefault(int(path.split(".")[2]), []).append((path.split(".", 3)[3], fused))
    for i, updates in per_block.items():
        model.layers[i].update_modules(tree_unflatten(updates))
    mx.eval(model.parameters())
    return len(deltas)


# ---------------------------------------------------------------------------------------- CLI


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mlx_synapse.learn.merge",
        description="Merge LoRA adapters (directories) or task vectors (.safetensors files of deltas) "
                    "with TIES, DARE or linear averaging.")
    p.add_argument("sources", nargs="+", help="adapter directories, or .safetensors task vectors")
    p.add_argument("--out", required=True, help="output adapter directory (or .safetensors for task vectors)")
    p.add_argument("--method", default="ties", choices=METHODS)
    p.add_argument("--density", type=float, default=0.2,
                   help="share of entries kept: TIES's top-k by magnitude, DARE's keep probability (1 - p)")
    p.add_argument("--lam", type=float, default=1.0, help="scale of the merged delta (TIES's lambda)")
    p.add_argument("--weights", default=None, help="comma-separated weight per source (linear methods; "
                                                   "default 1/n each)")
    p.add_argument("--rank", type=int, default=None,
                   help="rank of the written adapter (truncated SVD; default: the sum of the sources' ranks)")
    p.add_argument("--seed", type=int, default=0, help="seed of DARE's drop masks")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    try:
        weights = None
        if args.weights is not None:
            try:
                weights = [float(w) for w in args.weights.split(",")]
            except ValueError:
                raise ValueError(f"[merge] --weights must be comma-separated numbers but got {args.weights!r}.") from None
        kw = dict(method=args.method, density=args.density, lam=args.lam, weights=weights, seed=args.seed)
        if all(s.endswith(".safetensors") for s in args.sources):
            import mlx.core as mx

            vectors = []
            for s in args.sources:
                if not Path(s).is_file():
                    raise FileNotFoundError(f"[merge] task vector {s!r} does not exist.")
                try:
                    vectors.append({k: np.array(v) for k, v in mx.load(s).items()})
                except Exception as e:  # MLX raises several types for a bad file
                    raise ValueError(f"[merge] cannot read {s} ({e}); it is truncated or not safetensors.") from None
            merged = merge_task_vectors(vectors, **kw)
            mx.save_safetensors(args.out, {k: mx.array(v) for k, v in merged.items()})
            print(f"merged {len(vectors)} task vectors ({args.method}) into {args.out}")
            return 0
        if any(s.endswith(".safetensors") for s in args.sources):
            raise ValueError("[merge] give adapter directories or .safetensors task vectors, not a mix.")
        deltas, config = merge_adapters(args.sources, **kw)
        rank = args.rank
        if rank is None:
            from .adapters import read_adapter_config

            rank = sum(int(read_adapter_config(s)["lora_parameters"]["rank"]) for s in args.sources)
        errors = save_merged_adapter(deltas, config, args.out, rank)
        print(f"merged {len(args.sources)} adapters ({args.method}, density {args.density}, lam {args.lam}) "
              f"into {args.out}: rank {rank}, SVD relative error {errors['overall']:.2e} "
              f"(worst layer {max(errors['per_layer'].values(), default=0.0):.2e})")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
