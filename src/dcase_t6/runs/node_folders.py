"""Which process writes a folder that the nodes of a multi-node torchrun job may see as one (a shared file system)
or each as its own copy (a node-local disk such as ``$TMPDIR``): the audio cache under ``--data-root``.

Each node's first process (``LOCAL_RANK`` 0) writes a marker file holding a random token into the folder; the
tokens are gathered and every node's first process looks for every node's marker. Nodes that see one another's
markers share the folder, and of each such group the lowest-ranked first process writes it: global rank 0 alone
on a shared file system, every node's first process on node-local disks. Markers are removed once every node has
looked. A node whose first process cannot write a marker (a read-only folder) writes nothing, except that global
rank 0 keeps doing what it always did (it checks the folder, and says what is missing). Alone, this process writes.

Nodes with node-local data roots must hold the same prepared data: ``check_same_data`` compares what every process
read (fingerprints of the training pairs and the validation split) and stops every process with one line naming
the ranks and hosts that differ from global rank 0.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

import torch.distributed as dist

from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.runs.world import World

MARKER_PREFIX = ".dcase-t6-node-"


def folder_writer(world: World, folder: str | os.PathLike, reporter: Reporter = SILENT) -> bool:
    """Whether this process builds or updates ``folder`` for the nodes that see it (a collective: every process
    must call it; the others wait at a barrier of their own afterwards).

    Args:
        world: the processes.
        folder: the folder (it should exist; one that does not gets no marker, see the module docstring).
        reporter: the main process says when the folder is not one folder shared by every node.

    Returns:
        True on the one process per group of nodes sharing ``folder`` that writes it.
    """
    if world.size == 1:
        return True
    folder = Path(folder)
    token = _mark(folder) if world.is_local_main else None
    holders = [None] * world.size
    dist.all_gather_object(holders, (world.rank, token))
    marked = [(rank, other) for rank, other in holders if other is not None]
    writes = world.is_main and token is None
    if token is not None:
        seen = [rank for rank, other in marked if (folder / f"{MARKER_PREFIX}{other}").exists()]
        writes = min(seen, default=world.rank) == world.rank
        if world.is_main and len(seen) < len(marked):
            reporter.info(f"{folder}: node-local (this node sees {len(seen)} of {len(marked)} nodes' markers): the "
                          "first process of each node builds or checks its own audio cache there")
    world.barrier()  # every node has looked before any marker goes
    if token is not None:
        (folder / f"{MARKER_PREFIX}{token}").unlink(missing_ok=True)
    return writes


def check_same_data(world: World, fingerprints: dict[str, str], data_root: str | os.PathLike) -> None:
    """Stop when the processes did not read the same data (a collective: every process must call it).

    On several nodes each node may read its own copy of the data root; a copy prepared from other sources, by
    another version, or whose audio cache skipped other clips would give each node other pairs under the same
    indexes, and training would silently mix them.

    Args:
        world: the processes.
        fingerprints: what this process read, by name (``"training pairs"``: their fingerprint, ...).
        data_root: the ``data_root`` the processes read, for the message.

    Raises:
        UserError: on every process, naming the first item that differs and the ranks (and hosts) whose copy
            differs from global rank 0's.
    """
    if world.size == 1:
        return
    gathered: list = [None] * world.size
    dist.all_gather_object(gathered, (socket.gethostname(), fingerprints))
    main_host, expected = gathered[0]
    for name, value in expected.items():
        differ = [(rank, host) for rank, (host, read) in enumerate(gathered) if read.get(name) != value]
        if differ:
            ranks = ", ".join(f"{rank} ({host})" for rank, host in differ[:8]) + (", ..." if len(differ) > 8 else "")
            raise UserError(f"{data_root}: the processes did not read the same data: the {name} of rank(s) {ranks} "
                            f"differ from rank 0's ({main_host}); give every node the same prepared data (copy "
                            "one node's data root, audio cache included, to the others) or one shared --data-root")


def _mark(folder: Path) -> str | None:
    """A fresh token written (and flushed to the file server) into a marker file in ``folder``; None when it
    cannot be written."""
    token = secrets.token_hex(16)
    try:
        with open(folder / f"{MARKER_PREFIX}{token}", "x", encoding="utf-8") as handle:
            handle.write(token)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError:
        return None
    return token
