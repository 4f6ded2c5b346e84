"""The validated configuration of one pruning run (pydantic): every error names its key."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ecoflap.core.errors import EcoflapError, describe_validation_error
from ecoflap.core.pruning import NMPattern


class PruneConfig(BaseModel):
    """What ``ecoflap prune`` runs; the defaults are the embedded default job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = "mini-blip2"
    targets: list[str] = Field(default_factory=list, description="regexes of layers to prune")
    ignore: list[str] = Field(default_factory=list, description="regexes of layers to leave dense")
    towers: list[str] = Field(default_factory=list, description="prune only these towers (default: all)")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    corpus: str = "wikipedia"

    scorer: str = "zeroth-order"
    allocator: str = "ecoflap"
    pruner: str = "wanda"
    allocation_file: str | None = None

    sparsity: float = Field(0.5, ge=0.0, lt=1.0)
    max_sparsity: float | None = Field(None, ge=0.0, le=1.0)
    granularity: Literal["layer", "block", "tower"] = "block"
    aggregation: Literal["sum", "avg"] = "sum"
    per_tower: bool = False
    nm: str | None = None
    comparison: Literal["auto", "row", "matrix"] = "auto"

    nsamples: int = Field(32, ge=1)
    seqlen: int = Field(512, ge=2)
    # The coarse step's own calibration set. The paper scores on 32 samples; zeroth-order costs
    # two partial forward passes per tensor per sample, so the default keeps it to minutes on a CPU.
    score_nsamples: int = Field(8, ge=1)
    score_seqlen: int = Field(128, ge=2)
    seed: int = 42
    micro_batch: int = Field(4, ge=1)

    zo_eps: float = Field(1e-3, gt=0.0)
    zo_noise: int = Field(1, ge=1)
    zo_group: int = Field(1, ge=1, description="calibration samples sharing one perturbation")
    zo_level: Literal["tensor", "block"] = "tensor"
    fo_variant: Literal["grad-mag-abs", "grad-only", "grad-mag-square"] = "grad-mag-abs"

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

    @classmethod
    def build(cls, **values: object) -> PruneConfig:
        """Validate ``values``; a mistake becomes one EcoflapError line naming the key."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise EcoflapError(describe_validation_error(exc)) from None
