"""The validated configuration of one pruning run (pydantic): every error names its key."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ecoflap.core.allocation import smooth_window_problem
from ecoflap.core.datasets.corpora import check_corpus
from ecoflap.core.devices import check_device_name, device_identity, resolve_device
from ecoflap.core.errors import EcoflapError, describe_validation_error
from ecoflap.core.provenance import SCORER_DEFAULTS, ZO_KEYS_BEFORE, ZO_SMOOTH_BLOCKS, fingerprint
from ecoflap.core.pruning import NMPattern
from ecoflap.core.scoring import FirstOrderVariant, ZerothOrderVariant

#: seeds reach numpy (lm-eval seeds it), whose seeds are unsigned 32-bit integers
MAX_SEED = 2**32 - 1
#: generous bounds that keep a typo (an extra zero or three) from reaching torch as an overflow
MAX_SAMPLES = 1_000_000
MAX_SEQLEN = 1_048_576
#: examples per evaluation task (the results database's integer columns are 32-bit)
MAX_EXAMPLES = 2**31 - 1
#: allocators that read their own statistics of the dense model (the scorer that computes them), not --scorer's
LAYERWISE_SCORERS = {"owl": "wanda-metric", "dlp": "wanda-metric"}
#: the largest M of an N:M pattern (layers' input widths are multiples of the usual 4, 8, 16, 32)
MAX_NM_GROUP = 1024


class PruneConfig(BaseModel):
    """What ``ecoflap prune`` runs; the defaults are the embedded default job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # group "model"
    model: str = Field("mini-blip2", min_length=1, description="registered model name or a local model folder")
    targets: list[str] = Field(default_factory=list, description="regex of layers to prune (repeatable)")
    ignore: list[str] = Field(default_factory=list, description="regex of layers to keep dense (repeatable)")
    towers: list[str] = Field(default_factory=list, description="prune only this tower, e.g. vision (repeatable)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="weights' precision (Wanda's norms, SparseGPT's Hessian, zeroth-order losses: float32)"
    )
    corpus: str = Field("wikipedia", description="calibration data: 'wikipedia', 'easy-vqa' or a text file")

    # group "device"
    device: str = Field("auto", description="where every step computes: auto (a GPU if any, else cpu), cpu, cuda[:N]")
    offload: Literal["none", "cpu", "disk"] = Field(
        "none",
        description="fine step and zeroth-order scoring: the blocks stay on the CPU (cpu) or in the model's files "
        "(disk: Hugging Face safetensors folders), each on --device only while it computes",
    )

    # group "method"
    scorer: str = Field("zeroth-order", description="coarse scorer: zeroth-order, first-order")
    allocator: str = Field("ecoflap", description="sparsity allocator: ecoflap, uniform, from-file, owl, dlp")
    pruner: str = Field("wanda", description="layer pruner: wanda, sparsegpt, magnitude, ria")
    refine: str | None = Field(
        None, min_length=1, description="refine each layer's mask after a mask-only pruner: dsnot (DSnoT)"
    )
    allocation_file: str | None = Field(None, description="JSON sparsity per layer for --allocator from-file")
    sparsity: float = Field(0.5, ge=0.0, lt=1.0, allow_inf_nan=False, description="global target sparsity in [0, 1)")
    max_sparsity: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="cap per group (the paper's p_max) [target + 0.1; owl, dlp: none, their spread bounds them]",
    )
    granularity: Literal["layer", "block", "tower"] = Field("block", description="allocation groups")
    aggregation: Literal["sum", "avg"] = Field("sum", description="group score: sum or mean of its tensors")
    per_tower: bool = Field(False, description="one budget per tower instead of one shared budget")
    smooth_blocks: int | None = Field(
        None,
        ge=1,
        le=99,
        description=f"ecoflap: average score densities over this many adjacent groups of a tower (odd) "
        f"[zeroth-order: {ZO_SMOOTH_BLOCKS}, else 1]",
    )
    nm: str | None = Field(None, description="N:M semi-structured pattern, e.g. 2:4 (with --allocator uniform)")
    comparison: Literal["auto", "row", "matrix"] = Field("auto", description="Wanda's comparison group")

    # group "calibration"
    nsamples: int = Field(32, ge=1, le=MAX_SAMPLES, description="fine-step calibration samples")
    seqlen: int = Field(512, ge=2, le=MAX_SEQLEN, description="tokens per fine-step calibration sample")
    # The coarse step's own calibration set. The paper scores on 32 samples; zeroth-order costs
    # two partial forward passes per tensor per sample, so the default keeps it to minutes on a CPU.
    score_nsamples: int = Field(8, ge=1, le=MAX_SAMPLES, description="coarse-step calibration samples")
    score_seqlen: int = Field(128, ge=2, le=MAX_SEQLEN, description="tokens per coarse-step sample")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="seed of calibration windows and perturbations")
    micro_batch: int = Field(4, ge=1, le=MAX_SAMPLES, description="samples per forward pass")

    # group "zeroth-order / first-order"
    zo_eps: float = Field(
        SCORER_DEFAULTS["zo_eps"], gt=0.0, le=1.0, allow_inf_nan=False, description="zeroth-order perturbation size"
    )
    zo_noise: int = Field(SCORER_DEFAULTS["zo_noise"], ge=1, le=1000, description="perturbations per tensor per group")
    zo_group: int = Field(
        SCORER_DEFAULTS["zo_group"], ge=1, le=MAX_SAMPLES, description="calibration samples sharing one perturbation"
    )
    # the reference's estimator is --zo-level tensor --zo-difference central --zo-variant grad-only
    zo_level: Literal["tensor", "block", "sampled"] = Field(
        SCORER_DEFAULTS["zo_level"],
        description="perturb one tensor, a whole block, or one tensor of every block per sample in turn",
    )
    zo_difference: Literal["central", "forward"] = Field(
        SCORER_DEFAULTS["zo_difference"],
        description="derivative along z: (L(W+eps z) - L(W-eps z)) / 2eps, or (L(W+eps z) - L(W)) / eps",
    )
    zo_head: Literal["full", "linear"] = Field(
        SCORER_DEFAULTS["zo_head"],
        description="the loss head in each perturbed pass: full, or linear (g . (h' - h) at the head's input; "
        "causal LMs)",
    )
    zo_variant: ZerothOrderVariant = Field(
        SCORER_DEFAULTS["zo_variant"],
        description="zeroth-order score per tensor: s, s * sum|W| or s^2 * sum W^2 (MEZO-*), or s * sum|W| / "
        "sqrt(numel) (first-order's sum |W||g| as s estimates it), or weight-scaled (s along z * |W| / rms(W), "
        "times ||W||_2: first-order's sum |W g| element by element)",
    )
    fo_variant: FirstOrderVariant = Field(SCORER_DEFAULTS["fo_variant"], description="first-order score variant")

    # group "owl / dlp" (the reference defaults: OWL's LLaMA-7B script, DLP's run.py)
    owl_m: float = Field(5.0, gt=0.0, le=1e6, allow_inf_nan=False, description="OWL: outlier above M x block mean")
    owl_lambda: float = Field(
        0.08, ge=0.0, le=0.5, allow_inf_nan=False, description="OWL: block densities spread over [0, 2 lambda]"
    )
    dlp_alpha: float = Field(
        0.15, ge=0.0, le=0.5, allow_inf_nan=False, description="DLP: block densities spread over [0, 2 alpha]"
    )
    dlp_statistic: Literal["median", "mean"] = Field(
        "median", description="DLP: a block's unimportance, from its Wanda metric (paper: median)"
    )

    #: how ``--help`` groups the options generated from these fields
    GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Model": ("model", "targets", "ignore", "towers", "dtype", "corpus"),
        "Device": ("device", "offload"),
        "Method": ("scorer", "allocator", "pruner", "refine", "allocation_file", "sparsity", "max_sparsity",
                   "granularity", "aggregation", "per_tower", "smooth_blocks", "nm", "comparison"),
        "Calibration": ("nsamples", "seqlen", "score_nsamples", "score_seqlen", "seed", "micro_batch"),
        "Coarse-step scorers": ("zo_eps", "zo_noise", "zo_group", "zo_level", "zo_difference", "zo_head", "zo_variant",
                                "fo_variant"),
        "OWL and DLP allocators": ("owl_m", "owl_lambda", "dlp_alpha", "dlp_statistic"),
    }  # fmt: skip

    @field_validator("targets", "ignore")
    @classmethod
    def _regexes(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        return patterns

    @field_validator("nm")
    @classmethod
    def _nm_pattern(cls, nm: str | None) -> str | None:
        if nm is not None and NMPattern.parse(nm).m > MAX_NM_GROUP:
            raise ValueError(f"N:M pattern {nm}: M must be at most {MAX_NM_GROUP}")
        return nm

    @field_validator("smooth_blocks")
    @classmethod
    def _odd_window(cls, window: int | None) -> int | None:
        if window is not None and (problem := smooth_window_problem(window)):
            raise ValueError(problem)
        return window

    @field_validator("device")
    @classmethod
    def _device(cls, device: str, info: ValidationInfo) -> str:
        check_device_name(device)
        if info.context and info.context.get("check_files"):  # user input: this machine must have it
            try:
                resolve_device(device)
            except EcoflapError as exc:
                raise ValueError(str(exc).removeprefix(f"--device {device}: ")) from None
        return device

    @field_validator("corpus")
    @classmethod
    def _corpus(cls, corpus: str, info: ValidationInfo) -> str:
        if info.context and info.context.get("check_files"):  # user input; a report's config is read as it was
            check_corpus(corpus)
        return corpus

    @model_validator(mode="after")
    def _consistent(self) -> PruneConfig:
        if self.max_sparsity is not None and self.max_sparsity < self.sparsity:
            raise ValueError(f"max_sparsity {self.max_sparsity} is below the target sparsity {self.sparsity}")
        if self.allocator in LAYERWISE_SCORERS and self.granularity != "block":
            raise ValueError(f"the {self.allocator} allocator sets one sparsity per block: use granularity block")
        return self

    @property
    def cap(self) -> float:
        """The maximum sparsity per layer: the paper's target + 0.1 unless set (none for owl and dlp)."""
        if self.max_sparsity is not None:
            return self.max_sparsity
        if self.allocator in LAYERWISE_SCORERS:
            return 1.0
        return min(round(self.target + 0.1, 10), 1.0)

    @property
    def pattern(self) -> NMPattern | None:
        return NMPattern.parse(self.nm) if self.nm else None

    @property
    def target(self) -> float:
        """The sparsity the run aims at (an N:M pattern fixes it at 1 - N/M)."""
        return self.pattern.sparsity if self.pattern else self.sparsity

    @property
    def execution_device(self) -> Any:
        """The torch device the steps compute on (``auto`` resolved on this machine)."""
        return resolve_device(self.device)

    def device_identity(self) -> str | None:
        """The device's part of the method's identity: None on the CPU, else its type (see devices.py)."""
        return device_identity(self.execution_device if self.device == "auto" else self.device)

    def method(self) -> dict[str, Any]:
        """The method's full identity: every setting that changes the pruned model (results, keys, rows)."""
        scorer = self.coarse_scorer
        device = self.device_identity()  # absent on the CPU: the keys of CPU runs are those of before devices
        allocator_options = self.allocator_options()  # absent when none: the keys of before owl and dlp
        return ({"device": device} if device else {}) | {
            "pruner": self.pruner,
            "pruner_options": {"comparison": self.comparison} | ({"refine": self.refine} if self.refine else {}),
            "nm": self.nm,
            "scorer": scorer,
            "scorer_options": self.scorer_options() if scorer else {},
            "allocator": self.allocator,
            **({"allocator_options": allocator_options} if allocator_options else {}),
            "allocation_file": fingerprint(self.allocation_file),
            "granularity": self.granularity,
            "aggregation": self.aggregation,
            "target_sparsity": self.target,
            "max_sparsity": self.cap,
            "per_tower": self.per_tower,
            "towers": list(self.towers),
            "targets": list(self.targets),
            "ignore": list(self.ignore),
            "dtype": self.dtype,
            "calibration": {
                "corpus": fingerprint(self.corpus),
                "nsamples": self.nsamples,
                "seqlen": self.seqlen,
                "score_nsamples": self.score_nsamples,
                "score_seqlen": self.score_seqlen,
                "seed": self.seed,
            },
        }

    @property
    def coarse_scorer(self) -> str | None:
        """The scorer the coarse step runs: owl's and dlp's own statistics, --scorer for ecoflap, else none."""
        if self.allocator in LAYERWISE_SCORERS:
            return LAYERWISE_SCORERS[self.allocator]
        return self.scorer if self.allocator == "ecoflap" else None

    @property
    def smoothing(self) -> int:
        """ecoflap's smoothing window: as given, else zeroth-order's default (its scores are estimates)."""
        if self.smooth_blocks is not None:
            return self.smooth_blocks
        return ZO_SMOOTH_BLOCKS if self.coarse_scorer == "zeroth-order" else 1

    def allocator_options(self) -> dict[str, Any]:
        """The settings of the chosen allocator that change its allocation (given to it as options)."""
        smooth = {"smooth_blocks": self.smoothing} if self.smoothing != 1 else {}  # 1: the keys of before
        options = {"owl": {"owl_lambda": self.owl_lambda}, "dlp": {"dlp_alpha": self.dlp_alpha}, "ecoflap": smooth}
        return options.get(self.allocator, {})

    def statistic_options(self) -> dict[str, Any]:
        """What owl's and dlp's statistics scorer reduces each block's Wanda metric to (empty for the others)."""
        if self.allocator == "owl":
            return {"statistic": "outlier-ratio", "owl_m": self.owl_m}
        return {"statistic": self.dlp_statistic} if self.allocator == "dlp" else {}

    def scorer_options(self) -> dict[str, Any]:
        """The settings of the chosen scorer that change its scores."""
        if self.allocator in LAYERWISE_SCORERS:
            return self.statistic_options()
        if self.scorer == "first-order":
            return {"fo_variant": self.fo_variant}
        if self.scorer == "zeroth-order":
            later = {key: getattr(self, key) for key, before in ZO_KEYS_BEFORE.items() if getattr(self, key) != before}
            return {
                "zo_eps": self.zo_eps,
                "zo_noise": self.zo_noise,
                "zo_group": self.zo_group,
                "zo_level": self.zo_level,
            } | later
        return {name: getattr(self, name) for name in ("zo_eps", "zo_noise", "zo_group", "zo_level", "fo_variant")}

    @classmethod
    def build(cls, **values: object) -> PruneConfig:
        """Validate user input (the files it names checked too); a mistake is one EcoflapError line naming the key."""
        try:
            return cls.model_validate(values, context={"check_files": True})
        except ValidationError as exc:
            raise EcoflapError(describe_validation_error(exc)) from None


class ReportLayer(BaseModel):
    """One prunable layer as a checkpoint's report lists it."""

    name: str
    size: int = Field(ge=0)
    block: str
    tower: str


class CheckpointReport(BaseModel):
    """What a pruned checkpoint's ``report.json`` must hold for its evaluation to be recorded (other keys kept)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    config: PruneConfig
    method: dict[str, Any]
    model_hash: str | None = None
    layers: list[ReportLayer] = Field(min_length=1)
    allocation: dict[str, float] = Field(min_length=1, description="sparsity per pruned layer")
    measured_per_layer: dict[str, float]
    measured_sparsity: float = Field(ge=0.0, le=1.0)
    timings_s: dict[str, float] = Field(default_factory=dict)
    peak_memory_mb: float | None = None

    @field_validator("allocation", "measured_per_layer")
    @classmethod
    def _sparsities(cls, values: dict[str, float]) -> dict[str, float]:
        bad = next((k for k, v in values.items() if not 0.0 <= v <= 1.0), None)
        if bad is not None:
            raise ValueError(f"{bad}: sparsity {values[bad]} is outside [0, 1]")
        return values

    @classmethod
    def read(cls, path: Path) -> CheckpointReport:
        """``path`` (a report.json) validated; a mistake is one EcoflapError line naming the file and key."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise EcoflapError(f"cannot read the checkpoint's report {path}: {exc}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise EcoflapError(describe_validation_error(exc, f"checkpoint report {path}", "report")) from None
