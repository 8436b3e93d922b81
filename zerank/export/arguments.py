"""The arguments of the export commands (standard library only, so ``--help`` answers at once)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

# --quantize values each format takes.
QUANTIZE_BY_FORMAT = {"vllm": (), "onnx": ("int8",), "openvino": ("int8",),
                      "gguf": ("f32", "f16", "bf16", "q8_0", "q4_k_m")}


@dataclass
class ExportArguments:
    """zerank export: a zerank package into a runtime's format."""

    model: str = field(metadata={"help": "zerank folder (or hub id) to export."})
    out: Path = field(metadata={"help": "Output folder."})
    format: Literal["vllm", "onnx", "openvino", "gguf"] = field(
        default="vllm",
        metadata={"help": "vllm: a plain Qwen3ForSequenceClassification; onnx / openvino: the scoring graph for ONNX "
                          "Runtime / OpenVINO (scored by zerank.load_reranker); gguf: llama.cpp (llama-server "
                          "--reranking), checked through a real llama-server."},
    )
    quantize: Literal["int8", "f32", "f16", "bf16", "q8_0", "q4_k_m"] | None = field(
        default=None, metadata={"help": "onnx / openvino: int8 weights of the linear layers, else fp32; gguf: the file "
                                        "type, f16, bf16, q8_0 or q4_k_m, else F32."})
    drop_bias: bool = field(
        default=False,
        metadata={"help": "Export a model with a non-zero score_bias anyway, without the bias (scores shift)."},
    )
    llama_cpp: str | None = field(
        default=None, metadata={"help": "gguf: a llama.cpp tree with build/bin/llama-server and llama-quantize "
                                        "(default: $ZERANK_LLAMA_CPP, else the cache `python -m zerank.export.gguf "
                                        "build` fills)."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of --model."})
    verify: bool = field(
        default=True,
        metadata={"help": "Check parity with the source (it loads the source and the export one after the other; "
                          "gguf: through llama-server)."},
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing, non-empty --out folder."})

    def __post_init__(self):
        allowed = QUANTIZE_BY_FORMAT.get(self.format)
        if self.quantize is not None and allowed is not None and self.quantize not in allowed:
            raise ValueError(
                f"--quantize applies to --format onnx|openvino (int8) and gguf (f16, bf16, q8_0, q4_k_m), got "
                f"--format {self.format} --quantize {self.quantize}"
                + ("; vLLM quantizes at load time (its own --quantization option)." if self.format == "vllm" else "."))
