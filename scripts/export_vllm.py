"""Export a zerank folder as a plain ``Qwen3ForSequenceClassification`` checkpoint that vLLM and transformers load
natively (no remote code).

zerank's calibrated logit is ``(h . w_yes - score_bias) / score_temperature``. The export writes
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
    python scripts/export_vllm.py --model build/zerank-1 --out build/zerank-1-vllm
    python scripts/export_vllm.py --model build/calibrated --out build/calibrated-vllm --drop-bias
    vllm serve build/zerank-1-vllm --runner pooling --chat-template build/zerank-1-vllm/chat_template.jinja
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from build import VERIFY_PAIRS, ZERANK_FIELDS, base_weight_map, prepare_output_dir, rendered_prompts  # noqa: E402

logger = logging.getLogger("zerank.export_vllm")

ARCHITECTURE = "Qwen3ForSequenceClassification"
TEMPLATE_FILE = "chat_template.jinja"
# Keys of a zerank config.json that a plain Qwen3 config must not carry.
DROPPED_KEYS = (*ZERANK_FIELDS, "auto_map", "architectures", "model_type", "transformers_version", "id2label",
                "label2id", "num_labels", "pad_token_id")


@dataclass
class ExportArgs:
    model: str
    out: Path
    drop_bias: bool = False
    revision: str | None = None
    verify: bool = True
    overwrite: bool = False


def parse_args(argv: list[str] | None = None) -> ExportArgs:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="zerank folder (or hub id) to export.")
    parser.add_argument("--out", type=Path, required=True, help="Output folder for the vLLM checkpoint.")
    parser.add_argument("--drop-bias", action="store_true",
                        help="Export a model with a non-zero score_bias anyway, without the bias (scores shift).")
    parser.add_argument("--revision", help="Hub revision of --model.")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="Skip the fp32 parity check (it loads the source and the export one after the other).")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing, non-empty --out folder.")
    return ExportArgs(**vars(parser.parse_args(argv)))


def resolve_model(model: str, revision: str | None) -> Path:
    """A local zerank folder, or a hub snapshot of the files the export reads (remote code included)."""
    path = Path(model)
    if path.is_dir():
        return path
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise FileNotFoundError(f"--model {model} is neither a folder nor a hub id (owner/name).")
    from huggingface_hub import snapshot_download

    logger.info("Downloading %s from the hub", model)
    patterns = ["*.json", "*.safetensors", "*.py", "*.jinja", "*.txt", "tokenizer*"]
    return Path(snapshot_download(model, revision=revision, allow_patterns=patterns))


def read_zerank_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{model_dir} has no config.json: is it a zerank folder?")
    raw = json.loads(path.read_text())
    if raw.get("model_type") != "zerank":
        raise ValueError(f"{model_dir} is not a zerank model (model_type={raw.get('model_type')!r}); export "
                         "takes a folder built by scripts/build.py.")
    if not raw.get("score_temperature", 0) > 0:
        raise ValueError(f"{model_dir}: score_temperature must be positive, got {raw.get('score_temperature')}.")
    return raw


def make_qwen3_config(raw: dict, pad_token_id: int):
    from transformers import Qwen3Config

    fields = {k: v for k, v in raw.items() if k not in DROPPED_KEYS}
    config = Qwen3Config(**fields, num_labels=1, pad_token_id=pad_token_id)
    config.architectures = [ARCHITECTURE]
    return config


def export_weights(src: Path, out: Path, temperature: float) -> dict[str, int]:
    """Copy the weight files, rewriting only the one that holds ``score.weight`` (as fp32 ``w_yes / T``).

    Returns bytes per written file. Memory stays near one weight file: tensors are read from memory-mapped files.
    """
    weight_map = base_weight_map(src)
    if "score.weight" not in weight_map:
        raise KeyError(f"{src} has no score.weight: it is not a zerank checkpoint.")
    files: dict[str, int] = {}
    # safe_open handles are not iterable: hence f.keys() below.
    for file_name in tqdm(sorted(set(weight_map.values())), desc="Writing weights", unit="file"):
        if weight_map["score.weight"] != file_name:
            shutil.copy2(src / file_name, out / file_name)
            with safe_open(out / file_name, framework="pt") as f:
                files[file_name] = sum(_nbytes(f.get_slice(name)) for name in f.keys())  # noqa: SIM118
            continue
        with safe_open(src / file_name, framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
        tensors["score.weight"] = tensors["score.weight"].to(torch.float32) / temperature
        save_file(tensors, out / file_name, metadata={"format": "pt"})
        files[file_name] = sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
        gc.collect()
    index = src / "model.safetensors.index.json"
    if index.exists():
        weight_map_json = json.loads(index.read_text())["weight_map"]
        data = {"metadata": {"total_size": sum(files.values())}, "weight_map": weight_map_json}
        (out / index.name).write_text(json.dumps(data, indent=2) + "\n")
    return files


def _nbytes(tensor_slice) -> int:
    numel = 1
    for dim in tensor_slice.get_shape():
        numel *= dim
    itemsize = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1}
    return numel * itemsize.get(tensor_slice.get_dtype(), 4)


def write_tokenizer(src: Path, out: Path):
    """The tokenizer and zerank's prompt template (``chat_template.jinja``), byte for byte."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=True)
    if tokenizer.pad_token_id is None:
        raise ValueError(f"The tokenizer of {src} has no pad token: transformers' sequence-classification head needs "
                         "one to find the last real token of padded batches.")
    if not (src / TEMPLATE_FILE).exists():
        raise FileNotFoundError(f"{src} has no {TEMPLATE_FILE}: the export needs zerank's prompt template.")
    tokenizer.save_pretrained(out)
    shutil.copy2(src / TEMPLATE_FILE, out / TEMPLATE_FILE)
    return tokenizer


def render_readme(src_name: str, temperature: float, bias: float, dropped: bool) -> str:
    bias_note = (
        f"The source's `score_bias` = {bias} is **not** included (exported with `--drop-bias`): scores here are "
        f"`sigmoid(zerank calibrated logit + {bias / temperature:.6g})`; the ranking is unchanged."
        if dropped else "The source has `score_bias` = 0, so scores equal zerank's calibrated scores."
    )
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [reranker, vllm]
---

# {src_name} (vLLM export)

A plain `{ARCHITECTURE}` export of the zerank reranker `{src_name}`, made by `scripts/export_vllm.py`: the
"Yes"-token row of the LM head divided by `score_temperature` = {temperature} is the one-label `score.weight`, so the
sigmoid of the logit is the 0..1 relevance score. {bias_note}

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
def verify(src: Path, out: Path, pairs=VERIFY_PAIRS) -> float:
    """Max |sigmoid(exported logit) - expected| over ``pairs`` in fp32, one model in memory at a time.

    The expected score is zerank's ``CrossEncoder.predict`` (with the dropped bias added back to its logit when the
    export drops one). The exported model scores right-padded, batched prompts rendered with its own template.
    """
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = CrossEncoder(str(src), trust_remote_code=True, device="cpu", model_kwargs={"dtype": torch.float32})
    logits = source.predict(pairs, activation_fn=torch.nn.Identity(), convert_to_tensor=True).float().cpu()
    config = source.model.config
    expected = torch.sigmoid(logits + config.score_bias / config.score_temperature)
    del source
    gc.collect()

    model = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    if type(model).__name__ != ARCHITECTURE:
        raise TypeError(f"{out} loads as {type(model).__name__}, not {ARCHITECTURE}.")
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(rendered_prompts(tokenizer, pairs), add_special_tokens=False, padding=True, return_tensors="pt")
    scores = torch.sigmoid(model(**batch).logits[:, 0].float())
    del model
    gc.collect()
    return float((scores - expected).abs().max())


def export(args: ExportArgs) -> dict:
    src = resolve_model(args.model, args.revision)
    raw = read_zerank_config(src)
    temperature, bias = float(raw["score_temperature"]), float(raw.get("score_bias", 0.0))
    if bias != 0 and not args.drop_bias:
        raise ValueError(
            f"{args.model} has score_bias={bias}, which {ARCHITECTURE} cannot represent (its head has no bias). "
            f"Pass --drop-bias to export it without the bias: the ranking is unchanged but every score becomes "
            f"sigmoid(calibrated logit + {bias / temperature:.6g})."
        )
    out = args.out
    prepare_output_dir(out, args.overwrite)

    tokenizer = write_tokenizer(src, out)
    config = make_qwen3_config(raw, tokenizer.pad_token_id)
    config.save_pretrained(out)
    logger.info("Exporting %s to %s (score.weight = Yes row / %g%s)", src, out, temperature,
                f"; dropping score_bias={bias}" if bias else "")
    files = export_weights(src, out, temperature)
    (out / "README.md").write_text(render_readme(args.model, temperature, bias, dropped=bias != 0))
    report = {
        "source": args.model,
        "out": str(out),
        "architecture": ARCHITECTURE,
        "score_temperature": temperature,
        "dropped_score_bias": bias if bias else None,
        "pad_token_id": tokenizer.pad_token_id,
        "checkpoint_mb": round(sum(files.values()) / 1e6, 1),
        "files": files,
    }
    if args.verify:
        report["max_abs_score_error"] = verify(src, out)
        logger.info("Parity with zerank's scores (fp32): max |error| = %.3g", report["max_abs_score_error"])
        if not report["max_abs_score_error"] <= 1e-5:
            raise RuntimeError(f"The export disagrees with {args.model}: max |score error| "
                               f"{report['max_abs_score_error']:.3g} > 1e-5 (fp32).")
    (out / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        report = export(args)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(json.dumps({k: v for k, v in report.items() if k != "files"}, indent=2))


if __name__ == "__main__":
    main()
