"""What one sample of a model is (an image, a token sequence), for the units of its figures.

The figures keep their ``*_img_s`` names (the summary's contract), but a language model's
sample is a token sequence: its throughput reads in sequences per second. Torch-free on
purpose, so reports and plots need no backend; a test keeps the model list equal to the torch
backend's ``tokens`` models.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# The torch backend's models whose input is a batch of token sequences.
SEQUENCE_MODELS = frozenset({"bert_base"})


@dataclass(frozen=True, slots=True)
class SampleUnit:
    """How to name a model's samples: ``plural`` ("images") and per second (``rate``)."""

    plural: str
    rate: str

    @property
    def short(self) -> str:
        """The abbreviation of one sample: ``img``, ``seq``."""
        return self.rate.removesuffix("/s")


IMAGES = SampleUnit("images", "img/s")
SEQUENCES = SampleUnit("sequences", "seq/s")


def sample_unit(model: object) -> SampleUnit:
    """The unit of a model's samples; images unless it is a sequence model.

    >>> sample_unit("bert_base").rate, sample_unit("resnet50").rate, sample_unit(None).plural
    ('seq/s', 'img/s', 'images')
    """
    return SEQUENCES if isinstance(model, str) and model in SEQUENCE_MODELS else IMAGES


def summary_unit(summary: Mapping[str, Any]) -> SampleUnit:
    """The unit of a run's figures, from its summary's ``run.model``."""
    run = summary.get("run")
    return sample_unit(run.get("model") if isinstance(run, Mapping) else None)


def samples_of(models: Iterable[object]) -> tuple[str, str | None]:
    """How to name the throughput of runs of these models: the unit, and a note when they mix.

    The unit is ``img`` or ``seq`` when every model counts the same samples, else ``samples``,
    and the note then says which model counts what.

    >>> samples_of(["resnet50", "mlp"]), samples_of(["bert_base"])
    (('img', None), ('seq', None))
    >>> samples_of(["mlp", "bert_base", "resnet50"])
    ('samples', 'samples: images for mlp, resnet50; sequences for bert_base')
    """
    kinds: dict[SampleUnit, set[str]] = {}
    for model in models:
        kinds.setdefault(sample_unit(model), set()).add(str(model))
    if len(kinds) == 1:
        return next(iter(kinds)).short, None
    named = sorted((unit.plural, ", ".join(sorted(names))) for unit, names in kinds.items())
    return "samples", "samples: " + "; ".join(f"{plural} for {names}" for plural, names in named)
