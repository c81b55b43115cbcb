"""What one sample of a model is (an image, a token sequence), for the units of its figures.

The figures keep their ``*_img_s`` names (the summary's contract), but a language model's
sample is a token sequence: its throughput reads in sequences per second. Torch-free on
purpose, so reports and plots need no backend; a test keeps the model list equal to the torch
backend's ``tokens`` models.
"""

from __future__ import annotations

from collections.abc import Mapping
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
