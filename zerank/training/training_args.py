"""The trainer's arguments of ``zerank finetune``: sentence-transformers' CrossEncoderTrainingArguments with zerank's
defaults, parsed in the same pass as the command's other dataclasses (as TRL's ``SFTConfig`` extends
``TrainingArguments``).

Every field of CrossEncoderTrainingArguments is a flag of ``zerank finetune`` (``--max-steps``,
``--gradient-accumulation-steps``, ``--resume-from-checkpoint latest``, ``--use-cpu``, ...); the fields redeclared
here are the ones whose default zerank changes. ``--output-dir`` is the run's folder: the trainer itself writes to
``<output-dir>/checkpoints`` (:meth:`ZerankTrainingArguments.trainer_arguments`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from sentence_transformers.cross_encoder.training_args import CrossEncoderTrainingArguments
from transformers.trainer_utils import IntervalStrategy
from transformers.training_args import OptimizerNames

from zerank.model.loading import resolve_dtype


CHECKPOINTS_DIR = "checkpoints"
EVALUATIONS_PER_RUN = 4  # default --eval-steps/--save-steps: this many evaluations and checkpoints over the run
CHECKPOINTING_NAMES = (("gradient_checkpointing", "activation_checkpointing"),
                       ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"))


@dataclass
class ZerankTrainingArguments(CrossEncoderTrainingArguments):
    """CrossEncoderTrainingArguments with zerank finetune's defaults.

    The trainer's ``--seed`` seeds everything (the negative sampling, the held-out split, the training; ``data_seed``
    too unless given). ``--gradient-checkpointing`` is passed on as activation checkpointing (non-reentrant).
    ``--eval-steps``/``--save-steps`` left unset are chosen from the run's length by :meth:`trainer_arguments`.
    """

    output_dir: str = field(metadata={"help": "Where checkpoints/, final/ and the reports go (the trainer writes to "
                                              "<output-dir>/checkpoints)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Training epochs (--max-steps overrides)."})
    optim: OptimizerNames | str = field(default="adamw_torch", metadata={"help": "The optimizer (OptimizerNames)."})
    seed: int = field(default=0, metadata={"help": "Seed of the negative sampling, the held-out split and the "
                                                   "training."})
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Training rows per device and step."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Rows per batch of the held-out "
                                                                          "evaluator."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Linear warmup: steps, or a share of the steps if "
                                                               "below 1."})
    weight_decay: float = field(default=0.01, metadata={"help": "Weight decay (not on biases and norms)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept in <output-dir>/checkpoints."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps (a share of the steps if below "
                                                               "1)."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Integrations to report to ('none', "
                                                                               "'all', 'wandb', ...)."})
    bf16: bool | None = field(
        default=None, metadata={"help": "bfloat16 mixed precision (default: on a GPU that supports it, unless "
                                        "--use-cpu or --fp16).", "nargs": "?", "const": True}
    )
    eval_strategy: IntervalStrategy | str = field(
        default="steps", metadata={"help": "When the held-out evaluator runs: no, steps or epoch (no when no held-out "
                                           "query has a positive to rank)."}
    )
    eval_steps: float | None = field(
        default=None, metadata={"help": f"Evaluate every N steps (default: {EVALUATIONS_PER_RUN} times over the "
                                        "run)."}
    )
    save_steps: float | None = field(
        default=None, metadata={"help": "Save a checkpoint every N steps (default: every --eval-steps)."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "DistributedDataParallel's find_unused_parameters."}
    )

    def __post_init__(self):
        if self.bf16 is None:  # mixed precision follows the one "auto" dtype rule
            self.bf16 = not self.use_cpu and not self.fp16 and resolve_dtype("auto") == torch.bfloat16
        if self.data_seed is None:
            self.data_seed = self.seed
        # transformers deprecates the gradient_checkpointing* names (a FutureWarning): pass them as the new ones.
        for old, new in CHECKPOINTING_NAMES:
            if getattr(self, new) is None:
                setattr(self, new, getattr(self, old))
            setattr(self, old, None)
        if self.activation_checkpointing and self.activation_checkpointing_kwargs is None:
            self.activation_checkpointing_kwargs = {"use_reentrant": False}
        # Unset intervals wait for the run's length (trainer_arguments); TrainingArguments' checks see 1 meanwhile.
        unset = [name for name, value in (("eval_steps", self.eval_steps), ("save_steps", self.save_steps))
                 if value is None or (name == "eval_steps" and value == 0)]
        for name in unset:
            setattr(self, name, 1)
        super().__post_init__()
        for name in unset:
            setattr(self, name, None)

    @property
    def run_dir(self) -> Path:
        """The run's folder (``--output-dir``)."""
        return Path(self.output_dir)

    def trainer_arguments(self, total_steps: int, has_evaluator: bool) -> CrossEncoderTrainingArguments:
        """The arguments the trainer gets for a run of ``total_steps`` steps: these, writing to
        ``<output-dir>/checkpoints``, evaluating (if there is an evaluator) and saving every ``total_steps / 4``
        steps unless --eval-steps/--save-steps say otherwise."""
        every = self.eval_steps or max(1, total_steps // EVALUATIONS_PER_RUN)
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(CrossEncoderTrainingArguments) if f.init}
        values.update(output_dir=str(self.run_dir / CHECKPOINTS_DIR), eval_steps=every,
                      save_steps=every if self.save_steps is None else self.save_steps,
                      eval_strategy=self.eval_strategy if has_evaluator else IntervalStrategy.NO)
        return CrossEncoderTrainingArguments(**values)


def resume_target(value: str | None) -> str | bool | None:
    """``trainer.train``'s resume_from_checkpoint: ``latest`` = the newest checkpoint of the output folder."""
    if value is None:
        return None
    return True if value == "latest" else value
