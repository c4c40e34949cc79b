"""``python -m mlx_synapse.server``: the OpenAI-compatible API, memory and the web page.

Binds 127.0.0.1 by default; bound to any other address it needs an API key
(``--api-key``, ``--api-key-file`` or ``$MLX_SYNAPSE_API_KEY``). CORS is off unless
``--allowed-origins``. SIGINT/SIGTERM stop accepting connections, let running replies
finish for ``--shutdown-timeout`` seconds, then close the memory bank.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path
from typing import List, Optional

__all__ = ["main", "setup_arg_parser"]


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_synapse.server", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model directory, .gguf or hub id (default: SmolLM2-135M-Instruct)")
    p.add_argument("--backend", default="auto", choices=("auto", "mlx", "numpy"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key", default=None, help="required as 'Authorization: Bearer KEY' (or $MLX_SYNAPSE_API_KEY)")
    p.add_argument("--api-key-file", default=None, help="read the API key from this file")
    p.add_argument("--user-keys", default=None,
                   help="file of 'USER KEY' lines: a request with that key is USER's and sees only USER's memories")
    p.add_argument("--allowed-origins", nargs="*", default=[], help="CORS origins allowed (default: none)")
    p.add_argument("--db", default=None, help="memory database (default: ~/.local/share/mlx_synapse/memory.db)")
    p.add_argument("--no-memory", action="store_true", help="no memory bank: chat without memories, no embeddings")
    p.add_argument("--memory-off-by-default", action="store_true",
                   help="chat uses memory only when a request sends \"memory\": true")
    p.add_argument("--default-user", default="default", help="memory user when a request names none")
    p.add_argument("--parallel", type=int, default=1,
                   help="generations admitted at once (decoded in one batch on the NumPy backend's engine, "
                        "interleaved otherwise)")
    p.add_argument("--no-batch", action="store_true",
                   help="decode admitted generations one at a time (interleaved) instead of in one batch")
    p.add_argument("--max-queue", type=int, default=16, help="requests waiting for a slot before 429")
    p.add_argument("--max-body-mb", type=float, default=1.0)
    p.add_argument("--max-prompt-chars", type=int, default=100_000)
    p.add_argument("--max-tokens", type=int, default=256, help="reply length when a request sets none")
    p.add_argument("--max-tokens-limit", type=int, default=2048, help="the most a request may ask for")
    p.add_argument("--temp", type=float, default=0.0, help="temperature when a request sets none")
    p.add_argument("--shutdown-timeout", type=float, default=10.0)
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    return p


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _api_key(args) -> Optional[str]:
    if args.api_key_file:
        path = Path(args.api_key_file)
        if not path.is_file():
            raise FileNotFoundError(f"[server] --api-key-file {path} not found; give a file holding the key.")
        key = path.read_text(encoding="utf-8").strip()
        if not key:
            raise ValueError(f"[server] --api-key-file {path} is empty; put the key in it.")
        return key
    return args.api_key or os.environ.get("MLX_SYNAPSE_API_KEY") or None


def _user_keys(path: Optional[str]) -> Optional[dict]:
    """``{key: user}`` from a file of ``USER KEY`` lines (blank lines and ``#`` comments skipped)."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"[server] --user-keys {p} not found; give a file of 'USER KEY' lines.")
    keys = {}
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[1]) < 8:
            raise ValueError(f"[server] --user-keys {p} line {n} is not 'USER KEY' with a key of 8 or more "
                             "characters; fix that line.")
        if parts[1] in keys:
            raise ValueError(f"[server] --user-keys {p} line {n} repeats a key; give each user their own.")
        keys[parts[1]] = parts[0]
    if not keys:
        raise ValueError(f"[server] --user-keys {p} has no 'USER KEY' lines.")
    return keys


def main(argv: Optional[List[str]] = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    try:
        key = _api_key(args)
        user_keys = _user_keys(args.user_keys)
        if not _is_loopback(args.host) and not (key or user_keys):
            raise ValueError(f"[server] --host {args.host} is reachable from other machines; set an API key "
                             "(--api-key, --api-key-file or MLX_SYNAPSE_API_KEY) or bind 127.0.0.1.")
        if not 0 <= args.port <= 65535:
            raise ValueError(f"[server] --port must be 0 to 65535 but got {args.port}.")
        import uvicorn

        from ..loader import load
        from ..memory.bank import MemoryBank
        from .app import ServerConfig, create_app

        config = ServerConfig(api_key=key, user_keys=user_keys, allowed_origins=args.allowed_origins,
                              max_body_bytes=int(args.max_body_mb * (1 << 20)), max_prompt_chars=args.max_prompt_chars,
                              default_max_tokens=args.max_tokens, max_tokens_limit=args.max_tokens_limit,
                              temperature=args.temp, memory=not (args.no_memory or args.memory_off_by_default),
                              default_user=args.default_user, parallel=args.parallel, max_queue=args.max_queue,
                              batch=not args.no_batch,
                              model_id=Path(args.model).name if args.model else "SmolLM2-135M-Instruct")
        model, tok = load(args.model, backend=args.backend)
        bank = None if args.no_memory else MemoryBank(args.db, backend=args.backend)
        app = create_app(model, tok, bank, config)
        print(f"mlx_synapse server: http://{args.host}:{args.port}/ (model {config.model_id}, "
              f"memory {'off' if bank is None else bank.path}, API key {'on' if key or user_keys else 'off'})", file=sys.stderr)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                    timeout_graceful_shutdown=args.shutdown_timeout)
        return 0
    except ModuleNotFoundError as e:
        print(f"error: {e.name} is missing; install the server extra: pip install 'mlx-synapse[server]'",
              file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
