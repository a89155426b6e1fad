"""Training a dual encoder. ``config`` (TrainConfig, typed and checked), ``trainer`` (a run's lifecycle:
register, train, resume, status), ``builder`` (assembles a run in one explicit order), ``loop`` (epochs
and steps), ``data`` (caption pairs, seeded batches), ``objective`` and ``losses`` (named, weighted loss
terms), ``validation``, ``checkpointing``, ``sinks`` (registry, metrics.jsonl, TensorBoard, console),
``distributed`` (torchrun), and the recipe: ``distillation``, ``augmentation``, ``clustering``,
``pipeline`` (multi-stage YAML)."""
