"""Scoring with exported runtime folders (ONNX Runtime, OpenVINO): zerank's prompt, truncation and calibrated score
without torch at scoring time.

An exported folder (``zerank export --format onnx|openvino``) holds the graph, the tokenizer with zerank's chat
template and ``zerank_runtime.json``: the format, the graph file, the context length, the query cap. The graph's
output ``logits`` (one per pair) is already the calibrated logit ``(yes_logit - score_bias) / score_temperature``, so
the score is its sigmoid. :class:`RuntimeReranker` renders, truncates and batches pairs as zerank's
``CrossEncoder`` does (the same token ids; tested), runs the graph and returns the 0..1 scores.

Usage::

    from zerank import load_reranker
    model = load_reranker("build/zerank-1-onnx")        # any format folder; torch folders give a CrossEncoder
    model.predict([("What is 2+2?", "4")])              # numpy float32 scores in [0, 1]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from zerank_st import encode_pairs

logger = logging.getLogger(__name__)

RUNTIME_FILE = "zerank_runtime.json"
RUNTIME_FORMATS = ("onnx", "openvino")
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class RuntimeSpec:
    """The contents of ``zerank_runtime.json``."""

    format: str
    graph: str
    max_length: int
    max_query_tokens: int
    quantize: str | None = None
    source: str | None = None
    split_special_tokens_in_content: bool = True

    @classmethod
    def read(cls, folder: Path) -> RuntimeSpec:
        raw = json.loads((folder / RUNTIME_FILE).read_text())
        spec = cls(**{k: raw.get(k) for k in cls.__dataclass_fields__ if k in raw})
        if spec.format not in RUNTIME_FORMATS:
            raise ValueError(f"{folder / RUNTIME_FILE}: format must be one of {', '.join(RUNTIME_FORMATS)}, "
                             f"got {spec.format!r}.")
        return spec

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def is_runtime_folder(model: str | Path) -> bool:
    return (Path(model) / RUNTIME_FILE).is_file()


class PromptEncoder:
    """zerank's prompt as token ids, by the remote code's own rule (``zerank_st.encode_pairs``): the query capped at
    ``max_query_tokens`` (at most half the context), content tokenized with special tokens split, the prompt cut to
    ``max_length`` from the right with the template's suffix written back, so the last token is always the
    assistant prompt's."""

    def __init__(self, tokenizer, max_length: int, max_query_tokens: int, split_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_query_tokens = min(max_query_tokens, max(1, max_length // 2))
        self.split_special_tokens = split_special_tokens

    def encode_batch(self, pairs: Sequence[tuple[str, str]]) -> list[list[int]]:
        return encode_pairs(self.tokenizer, pairs, max_length=self.max_length, max_query_tokens=self.max_query_tokens,
                            split_special_tokens=self.split_special_tokens)

    def encode(self, query: str, document: str) -> list[int]:
        return self.encode_batch([(query, document)])[0]


def onnx_runner(path: Path, threads: int | None) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run([OUTPUT_NAME], feeds)[0]


def openvino_runner(path: Path, threads: int | None) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import openvino

    core = openvino.Core()
    # f32, not the bf16 that OpenVINO picks by default on CPUs with bf16 units: the export's scores stay zerank's.
    config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
    compiled = core.compile_model(str(path), "CPU", config)
    output = compiled.output(OUTPUT_NAME)
    request = compiled.create_infer_request()
    return lambda feeds: request.infer(feeds)[output]


RUNNERS = {"onnx": onnx_runner, "openvino": openvino_runner}


class RuntimeReranker:
    """A zerank reranker on ONNX Runtime or OpenVINO, with ``predict`` and ``rank`` like ``CrossEncoder``'s."""

    def __init__(self, folder: str | Path, *, max_length: int | None = None, max_batch_tokens: int = 8192,
                 threads: int | None = None):
        self.folder = Path(folder)
        self.spec = RuntimeSpec.read(self.folder)
        tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.encoder = PromptEncoder(tokenizer, max_length or self.spec.max_length, self.spec.max_query_tokens,
                                     self.spec.split_special_tokens_in_content)
        self.pad_token_id = tokenizer.pad_token_id
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be positive, got {max_batch_tokens}.")
        self.max_batch_tokens = max_batch_tokens
        self._run = RUNNERS[self.spec.format](self.folder / self.spec.graph, threads)

    def calibrated_logits(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        """The graph's output per pair, ``(yes_logit - b) / T``, in input order. Pairs are sorted by length and
        batched by ``batch_size`` and the token budget, right-padded (the graph reads each row's last real token)."""
        rows = self.encoder.encode_batch(pairs) if len(pairs) else []
        out = np.zeros(len(rows), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        start = 0
        while start < len(order):
            end = start + 1
            while (end < len(order) and end - start < batch_size
                   and (end - start + 1) * len(rows[order[end]]) <= self.max_batch_tokens):
                end += 1
            batch = order[start:end]
            width = len(rows[batch[-1]])
            ids = np.full((len(batch), width), self.pad_token_id, dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for j, i in enumerate(batch):
                ids[j, : len(rows[i])] = rows[i]
                mask[j, : len(rows[i])] = 1
            out[batch] = self._run({"input_ids": ids, "attention_mask": mask})[:, 0]
            start = end
        return out

    def predict(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32,
                apply_activation: bool = True) -> np.ndarray:
        """0..1 scores (``apply_activation=False``: the calibrated logits)."""
        logits = self.calibrated_logits(pairs, batch_size)
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32) if apply_activation else logits

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None, return_documents: bool = False,
             batch_size: int = 32) -> list[dict]:
        scores = self.predict([(query, d) for d in documents], batch_size=batch_size)
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [{"corpus_id": int(i), "score": float(scores[i]), **({"text": documents[i]} if return_documents else {})}
                for i in order]
