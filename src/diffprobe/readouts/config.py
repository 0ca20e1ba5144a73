"""The readout config: one set of sizes shared by every task's probe."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from diffprobe.config import Config, ConfigError


@dataclass(frozen=True)
class ReadoutConfig(Config):
    """Sizes of the cross-attention readout, its query encoders, and how a probe bank trains it.

    ``width`` is the readout width D (keys, values and queries all live in it); ``heads`` splits it for
    multi-head attention; ``mlp_ratio`` sizes the residual MLP (hidden = ratio * D); ``num_queries`` is the number
    of learned query tokens for classification-style tasks (their logits are averaged); ``fourier_bands`` is the
    number of octaves used to encode normalised coordinates; ``dropout`` applies to attention weights and the MLP.
    Every pair of ``learning_rates`` x ``weight_decays`` (AdamW's decoupled decay) trains as one probe of a
    :class:`~diffprobe.readouts.bank.ProbeBank`; a cell keeps the pair that scores best on validation.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"width": 64, "heads": 4, "mlp_ratio": 2.0, "num_queries": 1, "fourier_bands": 6},
        "base": {},
    }

    width: int = 256
    heads: int = 8
    mlp_ratio: float = 4.0
    num_queries: int = 1
    fourier_bands: int = 8
    dropout: float = 0.0
    feature_norm: Literal["layer", "batch"] = "layer"
    learning_rates: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    weight_decays: tuple[float, ...] = (0.05,)

    @classmethod
    def upgrade(cls, data: Mapping[str, Any]) -> Mapping[str, Any]:
        """Configs saved before the decay became a grid have one ``weight_decay``: the grid of that one value."""
        if "weight_decay" not in data or "weight_decays" in data:
            return data
        return {**{k: v for k, v in data.items() if k != "weight_decay"}, "weight_decays": [data["weight_decay"]]}

    def validate(self) -> None:
        if self.width <= 0 or self.heads <= 0:
            raise ConfigError(f"ReadoutConfig.width/heads: must be positive, got {self.width}/{self.heads}")
        if self.width % self.heads:
            raise ConfigError(f"ReadoutConfig.heads: width {self.width} is not divisible by heads {self.heads}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"ReadoutConfig.mlp_ratio: must be positive, got {self.mlp_ratio}")
        if self.num_queries <= 0:
            raise ConfigError(f"ReadoutConfig.num_queries: must be positive, got {self.num_queries}")
        if self.fourier_bands < 0:
            raise ConfigError(f"ReadoutConfig.fourier_bands: must be >= 0, got {self.fourier_bands}")
        if self.feature_norm not in ("layer", "batch"):
            raise ConfigError(f"ReadoutConfig.feature_norm: 'layer' or 'batch', got {self.feature_norm!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"ReadoutConfig.dropout: must be in [0, 1), got {self.dropout}")
        if not self.learning_rates or any(lr <= 0 for lr in self.learning_rates):
            raise ConfigError(f"ReadoutConfig.learning_rates: need positive rates, got {self.learning_rates}")
        if not self.weight_decays or any(wd < 0 for wd in self.weight_decays):
            raise ConfigError(f"ReadoutConfig.weight_decays: need rates >= 0, got {self.weight_decays}")
