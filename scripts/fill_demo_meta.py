"""Fill the team and system-description fields of the demo's metadata YAML (what a team writes by hand).

    python scripts/fill_demo_meta.py META.yaml
"""

import sys

import yaml


def main(path: str) -> None:
    with open(path, encoding="utf-8") as handle:
        meta = yaml.safe_load(handle)
    meta["submission"].update(name="dcase-t6 demo ensemble", abbreviation="t6demo")
    meta["submission"]["authors"] = [{
        "lastname": "Demo", "firstname": "Dana", "email": "dana.demo@example.org", "corresponding": True,
        "affiliation": {"abbreviation": "DCASET6", "institute": "dcase-t6 project", "department": "Demo",
                        "location": "Nowhere"}}]
    description = meta["system"]["description"]
    description.update(input_sampling_rate="16kHz", acoustic_features="log-mel energies",
                       text_embeddings="all-MiniLM-L6-v2 (frozen)", audio_modelling="cnn",
                       text_modelling="all-MiniLM-L6-v2", loss_function="InfoNCE", optimizer="adamw",
                       learning_rate="1e-3", ensemble="Yes", metric_monitored="validation mAP@10")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(meta, handle, sort_keys=False, allow_unicode=True)


if __name__ == "__main__":
    main(sys.argv[1])
