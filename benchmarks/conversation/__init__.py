"""A conversation-memory evaluation on families and values no part of the system was tuned on.

* :mod:`.vocab`, :mod:`.families`: the values and the template families, each split
  into dev (to tune on) and held-out (only the reported figure reads it).
* :mod:`.generator`: seeded users (timestamped messages; questions with gold answers,
  categories and evidence message ids).
* :mod:`.scoring`: right / wrong-abstention / old-value rules and Wilson intervals.
* :mod:`.systems`: the ``ingest`` / ``answer`` protocol; the Assistant and a plain-RAG baseline.
* :mod:`.locomo`: LoCoMo-style long dialogues, evidence recall@k of the bank.
* :mod:`.runner`, ``__main__``: the run and its tables
  (``python -m mlx_synapse.benchmarks.conversation --help``).
"""
