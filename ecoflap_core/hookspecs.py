"""The ecoflap plugin API: every hook specification in one module (the shape of pytest's hookspec.py).

Plugins are modules or objects with functions marked ``@hookimpl``; they are found through the
entry-point group ``ecoflap`` (the built-in ones too, declared in ecoflap's own pyproject.toml).
Each ``register_*`` hook receives a ``register`` callback: call it once per object. The host checks
each object at once and records which plugin registered it, so a mistake names its plugin.

Each hook of each plugin is called on its own: a plugin that raises in any hook (or at import, even
through ``sys.exit``) is named in a warning and skipped, and the other plugins load. A name has one
owner: a name that ecoflap's own (built-in) plugins register stays theirs, and a third-party plugin
registering it too fails, naming both; a name two third-party plugins register goes to neither.
The user may give a contested name to one plugin with ``ECOFLAP_OVERRIDE=KIND:NAME=PLUGIN[,...]``
(KIND: pruner, scorer, allocator, model, task or command).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from ecoflap.core.adapters import ModelSpec
    from ecoflap.core.allocation import Allocator
    from ecoflap.core.pruning import LayerPruner
    from ecoflap.core.scoring import Scorer

PROJECT = "ecoflap"
#: Version of this hook API; a plugin may declare ``ECOFLAP_API_VERSION`` (major must match).
API_VERSION = "1.0"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -------------------------------------------------------------------------
# The method: fine-step pruners, coarse-step scorers, sparsity allocators
# -------------------------------------------------------------------------


@hookspec
def register_pruners(register: Callable[[type[LayerPruner]], None]) -> None:
    """Register layer pruners.

    :param register: call with a subclass of :class:`ecoflap.core.pruning.LayerPruner` that has a
        ``name``; it prunes one linear layer from its inputs (``add_batch`` / ``prune`` / ``free``).

    Returns nothing; every implementation is called.
    """


@hookspec
def register_scorers(register: Callable[[type[Scorer]], None]) -> None:
    """Register coarse-step scorers (one importance score per weight tensor).

    :param register: call with a subclass of :class:`ecoflap.core.scoring.Scorer` that has a ``name``.

    Returns nothing; every implementation is called.
    """


@hookspec
def register_allocators(register: Callable[[type[Allocator]], None]) -> None:
    """Register sparsity allocators (scores -> a sparsity per layer for one global target).

    :param register: call with a subclass of :class:`ecoflap.core.allocation.Allocator` that has a
        ``name``.

    Returns nothing; every implementation is called.
    """


# -------------------------------------------------------------------------
# Models and evaluation tasks
# -------------------------------------------------------------------------


@hookspec
def register_models(register: Callable[[ModelSpec], None]) -> None:
    """Register models that ``--model NAME`` can load.

    :param register: call with a :class:`ecoflap.core.adapters.ModelSpec`: a name, the adapter
        class that describes the model's prunable layers, towers and blocks, and a loader.

    Returns nothing; every implementation is called.
    """


@hookspec
def register_tasks(register: Callable[[Any], None]) -> None:
    """Register evaluation tasks (the capability each needs, its metrics, higher-is-better).

    :param register: call with a subclass of :class:`ecoflap.core.tasks.Task` that has a ``name``
        and a ``capability`` (a key of :data:`ecoflap.core.capabilities.CAPABILITIES`).

    Returns nothing; every implementation is called.
    """


# -------------------------------------------------------------------------
# Command line
# -------------------------------------------------------------------------


@hookspec
def register_commands(cli: Any) -> None:
    """Add sub-commands to the ``ecoflap`` command line.

    :param cli: a copy of the root :class:`click.Group` for this plugin alone; decorate new commands
        with ``@cli.command()`` (or call ``cli.add_command``). The commands it holds afterwards that
        the root does not are added to the root; a plugin that replaces or removes one of the root's
        commands (``prune``, ``run``, ...) or raises adds none.

    Returns nothing; every implementation is called, each on its own.
    """
