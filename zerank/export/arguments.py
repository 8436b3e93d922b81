"""The arguments of the export commands (standard library only, so ``--help`` answers at once)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass
class ExportArguments:
    """zerank export: a zerank package into a runtime's format."""

    model: str = field(metadata={"help": "zerank folder (or hub id) to export."})
    out: Path = field(metadata={"help": "Output folder."})
    format: Literal["vllm", "onnx", "openvino"] = field(
        default="vllm",
        metadata={"help": "vllm: a plain Qwen3ForSequenceClassification; onnx / openvino: the scoring graph for ONNX "
                          "Runtime / OpenVINO (scored by zerank.load_reranker)."},
    )
    quantize: Literal["int8"] | None = field(
        default=None, metadata={"help": "onnx / openvino: int8 weights of the linear layers (default: fp32)."})
    drop_bias: bool = field(
        default=False,
        metadata={"help": "Export a model with a non-zero score_bias anyway, without the bias (scores shift)."},
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision of --model."})
    verify: bool = field(
        default=True,
        metadata={"help": "Check fp32 parity with the source (it loads the source and the export one after "
                          "the other)."},
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing, non-empty --out folder."})
