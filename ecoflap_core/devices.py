"""Where the job computes: ``--device auto|cpu|cuda|cuda:N`` resolved and checked, tensors moved there.

``auto`` is the first GPU when torch sees one, else the CPU. A device this machine lacks is an
:class:`EcoflapError` before any model loads. Inputs built on the CPU by a model adapter follow the
module that receives them (:func:`inputs_follow_parameters`), so an adapter needs no device code.
"""

from __future__ import annotations

import contextlib
import re
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ecoflap.core.errors import EcoflapError

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d{1,3})?")


def check_device_name(name: str) -> str:
    """``name`` if it is one of auto, cpu, cuda, cuda:N (the config's syntax check)."""
    if not DEVICE_PATTERN.fullmatch(name):
        raise ValueError(f"{name!r} is not a device: use auto, cpu, cuda or cuda:N")
    return name


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` stands for on this machine; one it lacks is an EcoflapError."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise EcoflapError(f"--device {name}: torch sees no CUDA GPU on this machine: use --device cpu or auto")
        if (device.index or 0) >= count:
            raise EcoflapError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
        return torch.device("cuda", device.index or 0)
    return device


def device_identity(device: torch.device | str) -> str | None:
    """What a device adds to a method's identity: None for the CPU (keys as before devices existed), else its
    type ("cuda"): a GPU's kernels round differently from the CPU's, so their results never share a key."""
    device = torch.device(device)
    return None if device.type == "cpu" else device.type


def describe_device(device: torch.device) -> dict[str, Any]:
    """The device for a report: its name and, for a GPU, the model and memory."""
    if device.type != "cuda":
        return {"device": str(device)}
    props = torch.cuda.get_device_properties(device)
    return {"device": str(device), "name": props.name, "memory_mb": round(props.total_memory / 2**20)}


def to_device(value: Any, device: torch.device) -> Any:
    """Tensors inside dicts, lists and tuples moved to ``device`` (other values as they are)."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def module_device(module: nn.Module) -> torch.device | None:
    """Where a module's own parameters (or buffers) live; None when it holds none directly."""
    for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
        return tensor.device
    return None


def _follow(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    device = module_device(module)
    if device is None or device.type == "meta":
        return args, kwargs
    return to_device(args, device), to_device(kwargs, device)


def inputs_follow_parameters(model: nn.Module) -> list[Callable[[], None]]:
    """Every module holding parameters moves its tensor inputs to its own device first (as accelerate's
    align-devices hooks do); returns the hooks' removers. Not needed when everything is on the CPU."""
    handles = [
        module.register_forward_pre_hook(_follow, with_kwargs=True)
        for module in model.modules()
        if module_device(module) is not None
    ]
    return [h.remove for h in handles]


# ---- memory and time of one step --------------------------------------------------------------------
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak resident memory of this process (Linux: VmHWM, by writing 5 to clear_refs);
    False where that is not possible (then the peak is the process's peak so far)."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """The process's peak resident memory since the last reset (VmHWM), else since it started (ru_maxrss)."""
    peak = _status_mb("VmHWM:")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float | None:
    """The process's resident memory now (VmRSS; None where /proc is not there)."""
    return _status_mb("VmRSS:")


def _status_mb(field: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@dataclass
class StepMeasure:
    """Time, peak resident memory of the process and peak device memory of one step."""

    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    #: resident memory when the step began (the libraries, the data loaded before it): the step added the rest
    start_rss_mb: float | None = None
    #: "step": the peak was reset when the step began; "process": the process's peak so far (no reset possible)
    peak_rss_scope: str = "step"
    peak_device_mb: float | None = None
    device: str = "cpu"
    #: torch's intra-op threads while the step ran: float sums round differently with another count, so a cached
    #: step (scores, checkpoint) reused by a run at another count keeps the count that made its numbers
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def peak_mb(self) -> float:
        """The peak that bounds the step: device memory on a GPU, else resident memory."""
        return self.peak_device_mb if self.peak_device_mb is not None else self.peak_rss_mb


@contextlib.contextmanager
def measure_step(device: torch.device | str = "cpu") -> Iterator[StepMeasure]:
    """Measure the ``with`` body: the figures are filled in when it ends. The peaks are the process's, so
    steps running at once in one process (a sweep with ``parallel`` > 1) share them."""
    device = torch.device(device)
    scope = "step" if reset_peak_rss() else "process"
    measure = StepMeasure(
        start_rss_mb=rss_mb(), peak_rss_scope=scope, device=str(device), threads=torch.get_num_threads()
    )
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        yield measure
    finally:
        measure.seconds = time.perf_counter() - start
        measure.peak_rss_mb = peak_rss_mb()
        if on_cuda:
            measure.peak_device_mb = torch.cuda.max_memory_allocated(device) / 2**20
