"""Run under torchrun by ``tests/test_finetuning.py``: each process trains a run (config overrides as JSON) with the
library's builder and loop, then writes what it saw to ``OUT/rank{rank}.json``: the loss of each step, which frozen
parameters changed (none should) and which trained ones did not (none should), its parameter groups and a digest
of its weights.

Usage: finetune_ranks.py WORKDIR OUT OVERRIDES_JSON
"""

import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from dcase_t6.runs.config import build_config
from dcase_t6.runs.lookup import lookup_for, writable
from dcase_t6.training.builder import build_training
from dcase_t6.training.distributed import init_world, share_from_main
from dcase_t6.training.loop import TrainingLoop
from dcase_t6.training.trainer import register_run


class StepLosses:
    """A step sink that keeps every step record's loss (the loop gives it one per ``log_every`` steps)."""

    def __init__(self):
        self.losses: list[float] = []

    def write(self, epoch: int, record: dict, improved: bool) -> None:
        pass

    def write_step(self, step: int, record: dict) -> None:
        self.losses.append(record["train_loss"])


def main(workdir: str, out: str, overrides: dict) -> None:
    config = build_config(None, {**overrides, "log_every": 1})
    world = init_world(config.dist_timeout_minutes)
    registry = lookup_for(world, workdir)  # the registry on rank 0, the run records on the others
    run_id = share_from_main(register_run(writable(registry), config) if world.is_main else None, world)
    setup = build_training(config, registry, run_id, world)
    steps = StepLosses()
    setup.sinks.append(steps)
    before = {name: p.detach().clone() for name, p in setup.model.named_parameters()}
    trained = {name for name, p in setup.model.named_parameters() if p.requires_grad}
    position = TrainingLoop(setup).run()
    after = dict(setup.model.named_parameters())
    frozen = set(before) - trained - {"log_temperature"}
    digest = hashlib.sha256()
    for name in sorted(after):
        digest.update(after[name].detach().numpy().tobytes())
    report = {"step": position.step, "losses": steps.losses, "frozen": len(frozen), "trained": len(trained),
              "frozen_changed": sorted(name for name in frozen if not torch.equal(before[name], after[name])),
              "trained_unchanged": sorted(name for name in trained if torch.equal(before[name], after[name])),
              "groups": len(setup.optimizer.param_groups), "digest": digest.hexdigest()}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{world.rank}.json").write_text(json.dumps(report))
    world.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
