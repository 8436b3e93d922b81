"""Export a zerank package for another runtime. Command: ``zerank export --model DIR --out OUT [--format vllm]``.

``vllm``: a plain ``Qwen3ForSequenceClassification`` checkpoint that vLLM and transformers load natively (no remote
code). zerank's calibrated logit is ``(h . w_yes - score_bias) / score_temperature``. The export writes
``score.weight = w_yes / score_temperature`` (fp32, one label) so that the sequence-classification logit is the
calibrated logit and its sigmoid (vLLM's default activation for one label) is zerank's 0..1 score. The
classification head of ``Qwen3ForSequenceClassification`` has no bias, so a non-zero ``score_bias`` cannot be
represented: the export refuses unless ``--drop-bias`` is given, in which case the exported scores are
``sigmoid(calibrated logit + score_bias / score_temperature)`` (same ranking, shifted calibration).

The folder gets the backbone weights (copied file by file; only the file holding ``score.weight`` is rewritten),
a Qwen3 ``config.json`` (``architectures: [Qwen3ForSequenceClassification]``, ``num_labels: 1``, ``pad_token_id`` set
so that transformers finds the last real token of padded batches), the tokenizer, zerank's prompt template as
``chat_template.jinja`` (pass it to vLLM's score/rerank endpoints with ``--chat-template``) and a short README. It
carries no sentence-transformers files: vLLM reads those to pick the activation and the input module.

Usage:
    zerank export --model build/zerank-1 --out build/zerank-1-vllm
    zerank export --model build/calibrated --out build/calibrated-vllm --drop-bias
    vllm serve build/zerank-1-vllm --runner pooling --chat-template build/zerank-1-vllm/chat_template.jinja

Another format is added as an ``export_<format>(args)`` function registered in ``EXPORTERS`` (and a value of
``ExportArguments.format``).
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase, Qwen3Config

from zerank.arguments import ExportArguments
from zerank.loading import load_reranker
from zerank.package import (
    CARD_FILE,
    PROBE_PAIRS,
    TEMPLATE_FILE,
    WEIGHTS_INDEX,
    ZERANK_FIELDS,
    read_config,
    rendered_prompts,
    resolve_model_dir,
    stored_bytes,
    weight_map,
)
from zerank.scoring import calibrated_logit
from zerank.system import atomic_write_json, atomic_write_text, prepare_output_dir

logger = logging.getLogger(__name__)

VLLM_ARCHITECTURE = "Qwen3ForSequenceClassification"
# What an export reads from a hub repo (the remote code included: the fp32 check loads the source).
SOURCE_FILE_PATTERNS = ["*.json", "*.safetensors", "*.py", "*.jinja", "*.txt", "tokenizer*"]
# Keys of a zerank config.json that a plain Qwen3 config must not carry.
DROPPED_KEYS = (*ZERANK_FIELDS, "auto_map", "architectures", "model_type", "transformers_version", "id2label",
                "label2id", "num_labels", "pad_token_id")
MAX_SCORE_ERROR = 1e-5  # fp32 parity of the export's scores with zerank's
REPORT_FILE = "export_report.json"


def read_zerank_config(model_dir: Path) -> dict:
    """The raw config.json of a zerank folder, checked: ``model_type: zerank`` and a positive temperature."""
    raw = read_config(str(model_dir))
    if raw.get("model_type") != "zerank":
        raise ValueError(f"{model_dir} is not a zerank model (model_type={raw.get('model_type')!r}); export "
                         "takes a folder built by `zerank build`.")
    if not raw.get("score_temperature", 0) > 0:
        raise ValueError(f"{model_dir}: score_temperature must be positive, got {raw.get('score_temperature')}.")
    return raw


def dropped_bias_shift(temperature: float, bias: float) -> float:
    """What an export without the bias adds to zerank's calibrated logit: (raw - 0) / T - (raw - b) / T = b / T."""
    return calibrated_logit(0.0, temperature, 0.0) - calibrated_logit(0.0, temperature, bias)


def make_qwen3_config(raw: dict, pad_token_id: int) -> Qwen3Config:
    """A one-label Qwen3ForSequenceClassification config with the zerank config's shape."""
    fields = {k: v for k, v in raw.items() if k not in DROPPED_KEYS}
    config = Qwen3Config(**fields, num_labels=1, pad_token_id=pad_token_id)
    config.architectures = [VLLM_ARCHITECTURE]
    return config


def export_weights(src: Path, out: Path, temperature: float) -> dict[str, int]:
    """Copy the weight files, rewriting only the one that holds ``score.weight`` (as fp32 ``w_yes / T``).

    Returns bytes per written file. Memory stays near one weight file: tensors are read from memory-mapped files.
    """
    tensors_at = weight_map(src)
    if "score.weight" not in tensors_at:
        raise KeyError(f"{src} has no score.weight: it is not a zerank checkpoint.")
    files: dict[str, int] = {}
    # safe_open handles are not iterable: hence f.keys() below.
    for file_name in tqdm(sorted(set(tensors_at.values())), desc="Writing weights", unit="file"):
        if tensors_at["score.weight"] != file_name:
            shutil.copy2(src / file_name, out / file_name)
            with safe_open(out / file_name, framework="pt") as f:
                files[file_name] = sum(stored_bytes(f.get_slice(name)) for name in f.keys())  # noqa: SIM118
            continue
        with safe_open(src / file_name, framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
        # The one-label head's logit is then the calibrated logit without the bias: (h . w_yes - 0) / T.
        tensors["score.weight"] = calibrated_logit(tensors["score.weight"].to(torch.float32), temperature, 0.0)
        save_file(tensors, out / file_name, metadata={"format": "pt"})
        files[file_name] = sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
        gc.collect()
    if (src / WEIGHTS_INDEX).exists():
        atomic_write_json(out / WEIGHTS_INDEX, {"metadata": {"total_size": sum(files.values())},
                                                "weight_map": tensors_at})
    return files


def write_tokenizer(src: Path, out: Path) -> PreTrainedTokenizerBase:
    """The tokenizer and zerank's prompt template (``chat_template.jinja``), byte for byte."""
    tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=True)
    if tokenizer.pad_token_id is None:
        raise ValueError(f"The tokenizer of {src} has no pad token: transformers' sequence-classification head needs "
                         "one to find the last real token of padded batches.")
    if not (src / TEMPLATE_FILE).exists():
        raise FileNotFoundError(f"{src} has no {TEMPLATE_FILE}: the export needs zerank's prompt template.")
    tokenizer.save_pretrained(out)
    shutil.copy2(src / TEMPLATE_FILE, out / TEMPLATE_FILE)
    return tokenizer


def render_vllm_readme(src_name: str, temperature: float, bias: float, dropped: bool) -> str:
    """The export's README: what it is, how its scores relate to zerank's, how to serve it with vLLM."""
    bias_note = (
        f"The source's `score_bias` = {bias} is **not** included (exported with `--drop-bias`): scores here are "
        f"`sigmoid(zerank calibrated logit + {dropped_bias_shift(temperature, bias):.6g})`; the ranking is unchanged."
        if dropped else "The source has `score_bias` = 0, so scores equal zerank's calibrated scores."
    )
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [reranker, vllm]
---

# {src_name} (vLLM export)

A plain `{VLLM_ARCHITECTURE}` export of the zerank reranker `{src_name}`, made by `zerank export --format vllm`:
the "Yes"-token row of the LM head divided by `score_temperature` = {temperature} is the one-label `score.weight`, so
the sigmoid of the logit is the 0..1 relevance score. {bias_note}

The prompt (query in the system turn, document in the user turn, then the assistant prompt) is in
`chat_template.jinja`. Pass it to vLLM, which only applies a score template that is given explicitly:

```bash
vllm serve PATH --runner pooling --chat-template PATH/chat_template.jinja
curl -s localhost:8000/rerank -H 'Content-Type: application/json' \\
  -d '{{"query": "What is 2+2?", "documents": ["4", "The answer is 1 million"]}}'
```

Do not use `truncate_prompt_tokens`: it cuts tokens from the left, i.e. the query and the template prefix. Keep every
query + document prompt within `--max-model-len` (truncate documents before sending them).
"""


@torch.inference_mode()
def verify_vllm(src: Path, out: Path, pairs: Sequence[tuple[str, str]] = PROBE_PAIRS) -> float:
    """Max |sigmoid(exported logit) - expected| over ``pairs`` in fp32, one model in memory at a time.

    The expected score is zerank's ``CrossEncoder.predict`` (with the dropped bias added back to its logit when the
    export drops one). The exported model scores right-padded, batched prompts rendered with its own template.
    """
    source = load_reranker(str(src), device="cpu", dtype="float32")
    logits = source.predict(pairs, activation_fn=torch.nn.Identity(), convert_to_tensor=True).float().cpu()
    config = source.model.config
    expected = torch.sigmoid(logits + dropped_bias_shift(config.score_temperature, config.score_bias))
    del source
    gc.collect()

    model = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    if type(model).__name__ != VLLM_ARCHITECTURE:
        raise TypeError(f"{out} loads as {type(model).__name__}, not {VLLM_ARCHITECTURE}.")
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(rendered_prompts(tokenizer, pairs), add_special_tokens=False, padding=True, return_tensors="pt")
    scores = torch.sigmoid(model(**batch).logits[:, 0].float())
    del model
    gc.collect()
    return float((scores - expected).abs().max())


def export_vllm(args: ExportArguments) -> dict:
    """Export ``args.model`` as a plain Qwen3ForSequenceClassification in ``args.out``; returns the report (also
    written to export_report.json)."""
    src = resolve_model_dir(args.model, args.revision, SOURCE_FILE_PATTERNS)
    raw = read_zerank_config(src)
    temperature, bias = float(raw["score_temperature"]), float(raw.get("score_bias", 0.0))
    if bias != 0 and not args.drop_bias:
        raise ValueError(
            f"{args.model} has score_bias={bias}, which {VLLM_ARCHITECTURE} cannot represent (its head has no bias). "
            f"Pass --drop-bias to export it without the bias: the ranking is unchanged but every score becomes "
            f"sigmoid(calibrated logit + {dropped_bias_shift(temperature, bias):.6g})."
        )
    out = args.out
    prepare_output_dir(out, args.overwrite)

    tokenizer = write_tokenizer(src, out)
    config = make_qwen3_config(raw, tokenizer.pad_token_id)
    config.save_pretrained(out)
    logger.info("Exporting %s to %s (score.weight = Yes row / %g%s)", src, out, temperature,
                f"; dropping score_bias={bias}" if bias else "")
    files = export_weights(src, out, temperature)
    atomic_write_text(out / CARD_FILE, render_vllm_readme(args.model, temperature, bias, dropped=bias != 0))
    report = {
        "source": args.model,
        "out": str(out),
        "format": "vllm",
        "architecture": VLLM_ARCHITECTURE,
        "score_temperature": temperature,
        "dropped_score_bias": bias if bias else None,
        "pad_token_id": tokenizer.pad_token_id,
        "checkpoint_mb": round(sum(files.values()) / 1e6, 1),
        "files": files,
    }
    if args.verify:
        report["max_abs_score_error"] = verify_vllm(src, out)
        logger.info("Parity with zerank's scores (fp32): max |error| = %.3g", report["max_abs_score_error"])
        if not report["max_abs_score_error"] <= MAX_SCORE_ERROR:
            raise RuntimeError(f"The export disagrees with {args.model}: max |score error| "
                               f"{report['max_abs_score_error']:.3g} > {MAX_SCORE_ERROR} (fp32).")
    atomic_write_json(out / REPORT_FILE, report)
    return report


EXPORTERS: dict[str, Callable[[ExportArguments], dict]] = {"vllm": export_vllm}


def export(args: ExportArguments) -> dict:
    """Export ``args.model`` in ``args.format``; returns the exporter's report."""
    if args.format not in EXPORTERS:
        raise ValueError(f"--format must be one of {', '.join(EXPORTERS)}, got {args.format!r}.")
    return EXPORTERS[args.format](args)


def main(args: ExportArguments) -> dict:
    """``zerank export``: export, print the report (without the per-file sizes) and return it.

    A bad input (a non-zerank folder, a bias the format cannot hold, an existing output) exits with one line,
    ``error: ...``, and status 1.
    """
    try:
        report = export(args)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(json.dumps({k: v for k, v in report.items() if k != "files"}, indent=2))
    return report
