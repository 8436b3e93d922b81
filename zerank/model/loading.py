"""Device and dtype policy, and loading a reranker: the one place where a ``CrossEncoder`` is made from a path;
the peak memory of a run on its device."""

from __future__ import annotations

import dataclasses
import logging

import torch
from sentence_transformers import CrossEncoder

from zerank.model.runtimes import RuntimeReranker, is_runtime_folder
from zerank.utils.arguments import DTYPES, ModelArguments
from zerank.utils.system import peak_rss_mb

logger = logging.getLogger(__name__)


def resolve_device(device: str | None = None) -> str:
    """``device``, or cuda when a GPU is available, else cpu."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(name: str | torch.dtype, device: str | None = None) -> torch.dtype:
    """The weights' dtype: "auto" is bfloat16 on a CUDA GPU that supports it and float32 everywhere else."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        on_cuda = resolve_device(device).startswith("cuda")
        return torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}.")
    return getattr(torch, name)


def is_zerank(model: CrossEncoder) -> bool:
    return getattr(model.model.config, "model_type", None) == "zerank"


def load_reranker(
    model: str,
    *,
    device: str | None = None,
    dtype: str | torch.dtype = "auto",
    max_length: int | None = None,
    max_batch_tokens: int | None = None,
) -> CrossEncoder | RuntimeReranker:
    """The reranker of a zerank folder or hub id (a ``CrossEncoder`` with the remote code), of any other
    cross-encoder, or of a folder exported by ``zerank export --format onnx|openvino`` (a ``RuntimeReranker``, CPU);
    in eval mode. Every kind has ``predict(pairs)`` returning the 0..1 scores.

    ``max_batch_tokens`` becomes a zerank model's fast-path budget (``model.model.fast_path.settings``; the config is
    untouched), so its forward batches stay under it; by default the budget of the device kind applies.
    """
    if max_batch_tokens is not None and max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be positive, got {max_batch_tokens}.")
    if is_runtime_folder(model):
        if device not in (None, "cpu") or dtype not in ("auto", "float32"):
            raise ValueError(f"{model} is an exported runtime folder: it runs on the CPU with the weights it was "
                             f"exported with (got device={device!r}, dtype={dtype!r}).")
        logger.info("Loading the exported runtime folder %s", model)
        budget = {} if max_batch_tokens is None else {"max_batch_tokens": max_batch_tokens}
        return RuntimeReranker(model, max_length=max_length, **budget)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    logger.info("Loading %s on %s (%s)", model, device, str(torch_dtype).removeprefix("torch."))
    encoder = CrossEncoder(model, trust_remote_code=True, device=device, model_kwargs={"dtype": torch_dtype})
    if max_length is not None:
        encoder.max_seq_length = max_length
    if max_batch_tokens is not None and is_zerank(encoder):
        fast_path = encoder.model.fast_path
        fast_path.settings = dataclasses.replace(fast_path.settings, max_batch_tokens=max_batch_tokens)
    encoder.model.eval()
    return encoder


def load_from_arguments(args: ModelArguments) -> CrossEncoder:
    return load_reranker(args.model, device=args.device, dtype=args.dtype, max_length=args.max_length,
                         max_batch_tokens=args.max_batch_tokens)


def peak_memory() -> dict[str, float]:
    """Peak RSS of this process and, on a GPU, the peak allocated device memory (MB)."""
    report = {"peak_rss_mb": round(peak_rss_mb(), 1)}
    if torch.cuda.is_available():
        report["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return report
