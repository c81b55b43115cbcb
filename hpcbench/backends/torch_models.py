"""The torch backend's models and options, importable without PyTorch.

``hpcbench run`` checks a spec's model and options here before any rank starts (a misspelt
model is one line, exit 2, and no run directory), without paying for ``import torch``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hpcbench.errors import ConfigError, closest
from hpcbench.resources import install_hint
from hpcbench.spec import RunSpec

if TYPE_CHECKING:
    from torch import nn

__all__ = ["MODELS", "OPTIONS", "ModelEntry", "TorchSettings", "model_entry"]

OPTIONS = ("device", "image_size", "seq_len", "compile_mode", "synthetic_pool")


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A model the backend can build: its input kind and size and its forward cost."""

    name: str
    kind: str  # "image" or "tokens"
    default_size: int  # image side in pixels, or sequence length
    gflops: float  # forward GFLOP per image (2 per multiply-add) at default_size

    def build(self) -> nn.Module:
        if self.kind == "tokens":
            from hpcbench.backends.transformer import Encoder

            return Encoder()
        try:
            import torchvision.models as tvm
        except ImportError as exc:
            raise ConfigError(
                f"model {self.name!r} needs torchvision ({exc}); "
                f"install with {install_hint('torch')} or use model bert_base"
            ) from exc
        if self.name == "inception_v3":
            return tvm.inception_v3(weights=None, aux_logits=False, init_weights=True)
        builder: Callable[..., nn.Module] = getattr(tvm, self.name)
        return builder(weights=None)


# Forward FLOPs at the default input size: torchvision's published GFLOPS (multiply-adds)
# times two; BERT-base's from EncoderShape.flops_per_token at 128 tokens.
MODELS: dict[str, ModelEntry] = {
    m.name: m
    for m in (
        ModelEntry("resnet50", "image", 224, 8.18),
        ModelEntry("resnet152", "image", 224, 23.03),
        ModelEntry("vgg16", "image", 224, 30.95),
        ModelEntry("alexnet", "image", 224, 1.43),
        ModelEntry("inception_v3", "image", 299, 11.46),
        ModelEntry("mobilenet_v2", "image", 224, 0.60),
        ModelEntry("bert_base", "tokens", 128, 22.35),
    )
}


def model_entry(name: str) -> ModelEntry:
    """The model called ``name``, or a ConfigError listing the valid ones."""
    entry = MODELS.get(name)
    if entry is None:
        raise ConfigError(
            f"model: {name!r} is not a torch backend model (valid: {', '.join(MODELS)})"
            f"{closest(name, list(MODELS))}"
        )
    return entry


@dataclass(frozen=True, slots=True)
class TorchSettings:
    """The backend options of a spec, checked once."""

    device: str
    input_size: int
    compile_mode: str | None
    synthetic_pool: int

    @classmethod
    def from_spec(cls, spec: RunSpec) -> TorchSettings:
        for key in spec.options:
            if key not in OPTIONS:
                raise ConfigError(
                    f"options: unknown torch backend option {key!r}{closest(key, OPTIONS)} "
                    f"(valid: {', '.join(OPTIONS)})"
                )
        entry = model_entry(spec.model)
        device = str(spec.options.get("device", "auto"))
        if device not in ("auto", "cuda", "cpu"):
            raise ConfigError(f"options.device: {device!r} is not one of auto, cuda, cpu")
        size_key = "seq_len" if entry.kind == "tokens" else "image_size"
        size = int(spec.options.get(size_key, entry.default_size))
        if size < 1:
            raise ConfigError(f"options.{size_key}: must be at least 1, got {size}")
        pool = int(spec.options.get("synthetic_pool", 4))
        if pool < 1:
            raise ConfigError(f"options.synthetic_pool: must be at least 1, got {pool}")
        mode = spec.options.get("compile_mode")
        return cls(
            device=device,
            input_size=size,
            compile_mode=None if mode is None else str(mode),
            synthetic_pool=pool,
        )
