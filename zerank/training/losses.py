"""The losses of ``zerank finetune`` and the dataset layout each reads (see :mod:`zerank.training.trainer`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from datasets import Dataset
from sentence_transformers import CrossEncoder
from sentence_transformers.cross_encoder import losses

from zerank.training.examples import Group


def training_dataset(groups: Sequence[Group], loss: str, relevance_level: int) -> Dataset:
    """A datasets.Dataset in the layout the loss reads: pairs with 0/1 labels for bce, pairs with their Elo targets
    (the groups' grades) for elo-mse, lists for the others."""
    if loss in ("bce", "elo-mse"):  # elo-mse: the grades are the Elo targets
        return Dataset.from_dict({
            "query": [g.query for g in groups for _ in g.documents],
            "document": [d for g in groups for d in g.documents],
            "label": [float(grade) if loss == "elo-mse" else float(grade >= relevance_level)
                      for g in groups for grade in g.grades],
        })
    return Dataset.from_dict({"query": [g.query for g in groups], "docs": [g.documents for g in groups],
                              "labels": [g.grades for g in groups]})


def make_loss(name: str, model: CrossEncoder, mini_batch_size: int | None) -> torch.nn.Module:
    """The sentence-transformers loss called ``name`` (see the module docstring)."""
    if name == "bce":
        return losses.BinaryCrossEntropyLoss(model)
    if name == "elo-mse":  # the 0..1 score, sigmoid(calibrated logit), regresses the target sigmoid(Elo)
        return losses.MSELoss(model, activation_fn=torch.nn.Sigmoid())
    cls = {"lambda": losses.LambdaLoss, "listnet": losses.ListNetLoss, "ranknet": losses.RankNetLoss}[name]
    return cls(model, mini_batch_size=mini_batch_size)
