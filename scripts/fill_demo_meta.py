"""Fill the team fields of the demo's metadata YAML (what a team writes by hand) and the parameter count.

    python scripts/fill_demo_meta.py META.yaml
"""

import json
import os
import subprocess
import sys

import yaml


def total_parameters(workdir: str) -> int:
    """Sum of the parameter counts of the best checkpoints of every registered run (the ensembled systems)."""
    runs = json.loads(subprocess.run(["dcase-t6", "--workdir", workdir, "runs", "list", "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    total = 0
    for run in runs:
        shown = json.loads(subprocess.run(["dcase-t6", "--workdir", workdir, "runs", "show", run["id"], "--json"],
                                          capture_output=True, text=True, check=True).stdout)
        total += next(f["parameters"] for f in shown["files"] if f["kind"] == "checkpoint" and f["tag"] == "best")
    return total


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
    meta["system"]["complexity"]["total_parameters"] = total_parameters(os.environ["DCASE_T6_WORKDIR"])
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(meta, handle, sort_keys=False, allow_unicode=True)


if __name__ == "__main__":
    main(sys.argv[1])
