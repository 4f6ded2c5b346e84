"""The evaluation tasks of the ECoFLaP paper as a task plugin (entry point ``tasks = "ecoflap.evaluation.tasks"``)."""

from __future__ import annotations

from ecoflap.core.hookspecs import hookimpl
from ecoflap.evaluation.tasks.language import MmluTask, WikitextTask
from ecoflap.evaluation.tasks.vision import CaptioningTask, ImageNetTask, RetrievalTask, VqaTask

TASKS = (VqaTask, CaptioningTask, RetrievalTask, ImageNetTask, MmluTask, WikitextTask)


@hookimpl
def register_tasks(register) -> None:
    for task in TASKS:
        register(task)
