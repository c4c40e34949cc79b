"""``python -m mlx_synapse <command> [args]`` runs ``python -m mlx_synapse.<command>``."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "generate": "mlx_synapse.generate",
    "convert": "mlx_synapse.convert.__main__",
    "memory": "mlx_synapse.memory.__main__",
    "chat": "mlx_synapse.chat",
    "bench": "mlx_synapse.bench",
    "train": "mlx_synapse.learn.train",
    "sleep": "mlx_synapse.sleep",
    "bundle": "mlx_synapse.learn.bundle",
    "serve": "mlx_synapse.server.__main__",
    "server": "mlx_synapse.server.__main__",
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        known = ", ".join(sorted(COMMANDS))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}; commands: {known}", file=sys.stderr)
            return 2
        print(f"usage: python -m mlx_synapse <command> [args]\ncommands: {known}")
        return 0
    module = importlib.import_module(COMMANDS[argv[0]])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
