"""The submission: ``package`` (zip build and organiser-style check), ``metadata`` (the system YAML, its
template and JSON Schema in ``templates/``), ``report`` (the draft technical report PDF)."""
