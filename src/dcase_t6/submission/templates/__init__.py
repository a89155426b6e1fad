"""Templates shipped with dcase-t6: metadata YAML, its JSON Schema and the report template."""
