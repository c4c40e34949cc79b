"""``python -m mlx_synapse.bench``: tokens/s, time to first token, memory, energy per
token and thermal throttling beside peers (see ``mlx_synapse.benchmarks.suite``)."""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    from mlx_synapse.benchmarks.suite import main as suite_main

    return suite_main(argv)


if __name__ == "__main__":
    sys.exit(main())
