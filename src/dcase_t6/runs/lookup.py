"""Which view of the run registry a process of a command gets: the SQLite registry on the main process (global rank
0, or the process alone), the run records on the others (``runs.record_reader`` says why), so that under torchrun
only global rank 0 ever opens ``registry.sqlite``; writes go through :func:`writable` on the main process only."""

from __future__ import annotations

from pathlib import Path

from dcase_t6.runs.record_reader import RunLookup, RunRecords
from dcase_t6.runs.registry import Registry
from dcase_t6.runs.world import World, launched_as_main, main_decides


def lookup_for(world: World | None, workdir: str | Path) -> RunLookup:
    """The registry on the main process, the run records on every other.

    Args:
        world: the processes; None before they are joined (torchrun's ``RANK`` decides, see ``launched_as_main``).
        workdir: the work directory.

    Returns:
        ``Registry(workdir)`` on the main process (it is opened, and made, there), else ``RunRecords(workdir)``.
    """
    main = launched_as_main() if world is None else world.is_main
    return Registry(workdir) if main else RunRecords(workdir)


def writable(lookup: RunLookup) -> Registry:
    """The registry behind ``lookup``, for the writes of the main process.

    Args:
        lookup: what :func:`lookup_for` gave the main process.

    Returns:
        It, as the registry.

    Raises:
        RuntimeError: ``lookup`` reads run records (an internal error: only the main process writes).
    """
    if not isinstance(lookup, Registry):
        raise RuntimeError("internal error: a process that reads run records tried to write to the run registry; "
                           "only the main process (global rank 0) writes it")
    return lookup


def resolved_by_main(lookup: RunLookup, reference: str, world: World) -> str:
    """The full id of the run ``reference`` (an id or a unique prefix) names, resolved by the main process and
    shared with the others (a collective); its UserError on every process.

    Args:
        lookup: this process's view (``lookup_for``).
        reference: what the user typed.
        world: the processes.

    Returns:
        The run's full id.
    """
    return main_decides(world, lambda: lookup.resolve(reference))
