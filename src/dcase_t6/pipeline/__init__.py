"""Multi-stage training pipelines, above training, embedding and ensembles: ``file`` (the pipeline YAML,
typed and checked before anything runs) and ``run`` (train each stage in order, then search and score its
ensembles)."""
