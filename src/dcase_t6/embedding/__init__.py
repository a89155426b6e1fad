"""Embedding: ``encode`` turns clips and captions into vectors (batched) and vectors into similarities;
``checkpoints`` rebuilds a registered run's model and embeds a split with it (the ``embed`` command);
``sharded`` shares that work among torchrun processes in resumable chunks, which ``partial`` keeps."""
