"""The validated configuration of one pruning run (pydantic): every error names its key."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ecoflap.core.errors import EcoflapError, describe_validation_error
from ecoflap.core.provenance import fingerprint
from ecoflap.core.pruning import NMPattern


class PruneConfig(BaseModel):
    """What ``ecoflap prune`` runs; the defaults are the embedded default job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # group "model"
    model: str = Field("mini-blip2", description="registered model name or a local model folder")
    targets: list[str] = Field(default_factory=list, description="regex of layers to prune (repeatable)")
    ignore: list[str] = Field(default_factory=list, description="regex of layers to keep dense (repeatable)")
    towers: list[str] = Field(default_factory=list, description="prune only this tower, e.g. vision (repeatable)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights' precision")
    corpus: str = Field("wikipedia", description="calibration data: 'wikipedia', 'easy-vqa' or a text file")

    # group "method"
    scorer: str = Field("zeroth-order", description="coarse scorer: zeroth-order, first-order")
    allocator: str = Field("ecoflap", description="sparsity allocator: ecoflap, uniform, from-file")
    pruner: str = Field("wanda", description="layer pruner: wanda, sparsegpt, magnitude")
    allocation_file: str | None = Field(None, description="JSON sparsity per layer for --allocator from-file")
    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="global target sparsity in [0, 1)")
    max_sparsity: float | None = Field(
        None, ge=0.0, le=1.0, description="cap per group (the paper's p_max) [target + 0.1]"
    )
    granularity: Literal["layer", "block", "tower"] = Field("block", description="allocation groups")
    aggregation: Literal["sum", "avg"] = Field("sum", description="group score: sum or mean of its tensors")
    per_tower: bool = Field(False, description="one budget per tower instead of one shared budget")
    nm: str | None = Field(None, description="N:M semi-structured pattern, e.g. 2:4 (with --allocator uniform)")
    comparison: Literal["auto", "row", "matrix"] = Field("auto", description="Wanda's comparison group")

    # group "calibration"
    nsamples: int = Field(32, ge=1, description="fine-step calibration samples")
    seqlen: int = Field(512, ge=2, description="tokens per fine-step calibration sample")
    # The coarse step's own calibration set. The paper scores on 32 samples; zeroth-order costs
    # two partial forward passes per tensor per sample, so the default keeps it to minutes on a CPU.
    score_nsamples: int = Field(8, ge=1, description="coarse-step calibration samples")
    score_seqlen: int = Field(128, ge=2, description="tokens per coarse-step sample")
    seed: int = Field(42, description="seed of calibration windows and perturbations")
    micro_batch: int = Field(4, ge=1, description="samples per forward pass")

    # group "zeroth-order / first-order"
    zo_eps: float = Field(1e-3, gt=0.0, description="zeroth-order perturbation size")
    zo_noise: int = Field(1, ge=1, description="perturbations per tensor per group")
    zo_group: int = Field(1, ge=1, description="calibration samples sharing one perturbation")
    zo_level: Literal["tensor", "block"] = Field("tensor", description="perturb one tensor or a whole block")
    fo_variant: Literal["grad-mag-abs", "grad-only", "grad-mag-square"] = Field(
        "grad-mag-abs", description="first-order score variant"
    )

    #: how ``--help`` groups the options generated from these fields
    GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Model": ("model", "targets", "ignore", "towers", "dtype", "corpus"),
        "Method": ("scorer", "allocator", "pruner", "allocation_file", "sparsity", "max_sparsity", "granularity",
                   "aggregation", "per_tower", "nm", "comparison"),
        "Calibration": ("nsamples", "seqlen", "score_nsamples", "score_seqlen", "seed", "micro_batch"),
        "Coarse-step scorers": ("zo_eps", "zo_noise", "zo_group", "zo_level", "fo_variant"),
    }  # fmt: skip

    @model_validator(mode="after")
    def _consistent(self) -> PruneConfig:
        if self.max_sparsity is not None and self.max_sparsity < self.sparsity:
            raise ValueError(f"max_sparsity {self.max_sparsity} is below the target sparsity {self.sparsity}")
        if self.nm is not None:
            NMPattern.parse(self.nm)
        return self

    @property
    def cap(self) -> float:
        """The maximum sparsity per layer: the paper's target + 0.1 unless set."""
        if self.max_sparsity is not None:
            return self.max_sparsity
        return min(round(self.sparsity + 0.1, 10), 1.0)

    @property
    def pattern(self) -> NMPattern | None:
        return NMPattern.parse(self.nm) if self.nm else None

    @property
    def target(self) -> float:
        """The sparsity the run aims at (an N:M pattern fixes it at 1 - N/M)."""
        return self.pattern.sparsity if self.pattern else self.sparsity

    def method(self) -> dict[str, Any]:
        """The method's full identity: every setting that changes the pruned model (results, keys, rows)."""
        needs_scores = self.allocator == "ecoflap"
        return {
            "pruner": self.pruner,
            "pruner_options": {"comparison": self.comparison},
            "nm": self.nm,
            "scorer": self.scorer if needs_scores else None,
            "scorer_options": self.scorer_options() if needs_scores else {},
            "allocator": self.allocator,
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

    def scorer_options(self) -> dict[str, Any]:
        """The settings of the chosen scorer that change its scores."""
        if self.scorer == "first-order":
            return {"fo_variant": self.fo_variant}
        if self.scorer == "zeroth-order":
            return {
                "zo_eps": self.zo_eps,
                "zo_noise": self.zo_noise,
                "zo_group": self.zo_group,
                "zo_level": self.zo_level,
            }
        return {name: getattr(self, name) for name in ("zo_eps", "zo_noise", "zo_group", "zo_level", "fo_variant")}

    @classmethod
    def build(cls, **values: object) -> PruneConfig:
        """Validate ``values``; a mistake becomes one EcoflapError line naming the key."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise EcoflapError(describe_validation_error(exc)) from None
