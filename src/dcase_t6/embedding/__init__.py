"""Embedding: ``encode`` turns clips and captions into vectors (batched) and vectors into similarities;
``checkpoints`` rebuilds a registered run's model and embeds a split with it (the ``embed`` command)."""
