"""Export a zerank package for another runtime.

Command: ``zerank export --format vllm|onnx|openvino --model DIR --out OUT [--quantize int8]``. Every format is
written into a hidden staging folder beside ``--out``, checked against zerank's own scores (a mismatch fails the
export loudly) and only then renamed into place (``system.staged_output_dir``).

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

``onnx`` / ``openvino``: the scoring graph (the Qwen3 backbone and the calibrated "Yes" projection, output
``logits`` = ``(yes_logit - score_bias) / score_temperature`` at each row's last real token, right-padded inputs),
exported with ``torch.onnx.export`` and, for OpenVINO, converted with ``openvino.convert_model``; ``--quantize int8``
quantizes the linear layers' weights (ONNX Runtime's ``quantize_dynamic``; NNCF's ``compress_weights`` for
OpenVINO). The folder carries the tokenizer, zerank's template and ``zerank_runtime.json``; ``zerank.load_reranker``
scores it (``zerank.model.runtimes``), and any ONNX Runtime / OpenVINO program can, with the prompt of its README.

Another format is added as an ``export_<format>(src, raw, out, args)`` function registered in ``EXPORTERS`` (and a
value of ``ExportArguments.format``).
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase, Qwen3Config

from zerank.export.arguments import ExportArguments
from zerank.model.loading import load_reranker
from zerank.model.package import (
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
from zerank.model.pair_template import install_pair_template
from zerank.model.runtimes import INPUT_NAMES, OUTPUT_NAME, RUNTIME_FILE, RuntimeReranker, RuntimeSpec
from zerank.model.scoring import calibrated_logit
from zerank.utils.system import atomic_write_json, atomic_write_text, staged_output_dir

logger = logging.getLogger(__name__)

VLLM_ARCHITECTURE = "Qwen3ForSequenceClassification"
# What an export reads from a hub repo (the remote code included: the fp32 check loads the source).
SOURCE_FILE_PATTERNS = ["*.json", "*.safetensors", "*.py", "*.jinja", "*.txt", "tokenizer*"]
# Keys of a zerank config.json that a plain Qwen3 config must not carry.
DROPPED_KEYS = (*ZERANK_FIELDS, "auto_map", "architectures", "model_type", "transformers_version", "id2label",
                "label2id", "num_labels", "pad_token_id")
MAX_SCORE_ERROR = 1e-5  # fp32 parity of the vLLM export's scores with zerank's
MAX_RUNTIME_SCORE_ERROR = 1e-4  # fp32 parity of an ONNX/OpenVINO export's scores with zerank's
MAX_INT8_SCORE_ERROR = 0.05  # int8 exports: a weight-quantization error, not a wrong graph or prompt
ONNX_FILE = "model.onnx"
OPENVINO_FILE = "openvino_model.xml"
ONNX_OPSET = 18
# Pairs of the parity check of runtime exports: the probe pairs, plus a document longer than the context of
# the check (so truncation and the template suffix are exercised).
RUNTIME_CHECK_MAX_LENGTH = 96
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
    """The tokenizer with its pair template (``tokenizer(query, document)`` renders the prompt) and zerank's
    prompt template (``chat_template.jinja``), byte for byte."""
    tokenizer = install_pair_template(AutoTokenizer.from_pretrained(src, trust_remote_code=True))
    if tokenizer.pad_token_id is None:
        raise ValueError(f"The tokenizer of {src} has no pad token: transformers' sequence-classification head needs "
                         "one to find the last real token of padded batches.")
    if not (src / TEMPLATE_FILE).exists():
        raise FileNotFoundError(f"{src} has no {TEMPLATE_FILE}: the export needs zerank's prompt template.")
    tokenizer.save_pretrained(out)
    write_transformers4_tokenizer_config(out / "tokenizer_config.json")
    shutil.copy2(src / TEMPLATE_FILE, out / TEMPLATE_FILE)
    return tokenizer


def write_transformers4_tokenizer_config(path: Path) -> None:
    """Store the extra special tokens as ``additional_special_tokens``, which transformers 4.x and 5.x both read as
    this list (5.x writes them as ``extra_special_tokens``, a field that 4.x expects to be a dict of named tokens)."""
    fields = json.loads(path.read_text())
    extra = fields.get("extra_special_tokens")
    if isinstance(extra, list):
        del fields["extra_special_tokens"]
        fields["additional_special_tokens"] = extra
        atomic_write_json(path, fields)


def write_transformers4_config(path: Path) -> None:
    """Add the fields transformers 4.x reads in place of 5.x's ``rope_parameters`` and ``dtype``: without
    ``rope_theta`` it falls back to 10,000 and every score changes."""
    fields = json.loads(path.read_text())
    rope = dict(fields.get("rope_parameters") or {})
    if "rope_theta" in rope:
        fields["rope_theta"] = rope.pop("rope_theta")
        fields["rope_scaling"] = None if rope.get("rope_type", "default") == "default" else rope
    if "dtype" in fields:
        fields["torch_dtype"] = fields["dtype"]
    atomic_write_json(path, fields)


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


def export_vllm(src: Path, raw: dict, out: Path, args: ExportArguments) -> dict:
    """Export the zerank folder ``src`` as a plain Qwen3ForSequenceClassification in ``out``; returns the report."""
    temperature, bias = float(raw["score_temperature"]), float(raw.get("score_bias", 0.0))
    if bias != 0 and not args.drop_bias:
        raise ValueError(
            f"{args.model} has score_bias={bias}, which {VLLM_ARCHITECTURE} cannot represent (its head has no bias). "
            f"Pass --drop-bias to export it without the bias: the ranking is unchanged but every score becomes "
            f"sigmoid(calibrated logit + {dropped_bias_shift(temperature, bias):.6g})."
        )
    tokenizer = write_tokenizer(src, out)
    config = make_qwen3_config(raw, tokenizer.pad_token_id)
    config.save_pretrained(out)
    write_transformers4_config(out / "config.json")
    logger.info("Exporting %s to %s (score.weight = Yes row / %g%s)", src, out, temperature,
                f"; dropping score_bias={bias}" if bias else "")
    files = export_weights(src, out, temperature)
    atomic_write_text(out / CARD_FILE, render_vllm_readme(args.model, temperature, bias, dropped=bias != 0))
    report = {
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
    return report


class ScoreGraph(torch.nn.Module):
    """What the ONNX/OpenVINO graph computes: the backbone on right-padded rows, the last real token's hidden
    state, the calibrated "Yes" logit (the model's own ``raw_logit`` and ``calibrate``). Plain attention: no prefix
    sharing or repacking, which the runtimes could not trace."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        last = attention_mask.sum(dim=1) - 1
        pooled = hidden[torch.arange(hidden.shape[0]), last]
        return self.model.calibrate(self.model.raw_logit(pooled))


def export_onnx_graph(src: Path, path: Path) -> None:
    """Export ``src``'s scoring graph in fp32 to ``path`` (weights as external data beside it), batch and sequence
    dimensions dynamic."""
    model = AutoModelForSequenceClassification.from_pretrained(
        src, trust_remote_code=True, dtype=torch.float32, attn_implementation="eager").eval()
    graph = ScoreGraph(model).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    logger.info("Exporting the scoring graph of %s with torch.onnx (opset %d)", src, ONNX_OPSET)
    with torch.inference_mode(), warnings.catch_warnings():
        # torch.onnx notes that the two inputs share their dynamic axes: true, and not a problem.
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints", category=UserWarning)
        # torch's own pytree deprecation, raised inside torch.export (nothing of ours to change).
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                category=FutureWarning)
        torch.onnx.export(
            graph, (ids, mask), str(path), input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            opset_version=ONNX_OPSET, dynamo=True, external_data=True, verbose=False,
        )
    del model, graph
    gc.collect()


def quantize_onnx_int8(path: Path, out_path: Path) -> None:
    """Dynamic int8 quantization of the graph's MatMul weights (activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(path), str(out_path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                     use_external_data_format=True)


def runtime_check_pairs() -> list[tuple[str, str]]:
    """The probe pairs and one document longer than ``RUNTIME_CHECK_MAX_LENGTH`` tokens (truncation)."""
    long_document = " ".join(f"Paragraph {i}: the reranker reads the document until the context ends." for i in range(40))
    return [*PROBE_PAIRS, ("What does the reranker read?", long_document)]


def verify_runtime(src: Path, out: Path, quantized: bool) -> dict:
    """Scores of the export (through ``RuntimeReranker``) against zerank's ``CrossEncoder.predict`` on the same pairs,
    both at a short context so the long pair is truncated; raises when the difference exceeds the format's gate."""
    pairs = runtime_check_pairs()
    source = load_reranker(str(src), device="cpu", dtype="float32", max_length=RUNTIME_CHECK_MAX_LENGTH)
    expected = source.predict(pairs)
    del source
    gc.collect()
    scores = RuntimeReranker(out, max_length=RUNTIME_CHECK_MAX_LENGTH).predict(pairs)
    error = float(abs(scores - expected).max())
    gate = MAX_INT8_SCORE_ERROR if quantized else MAX_RUNTIME_SCORE_ERROR
    logger.info("Parity with zerank's scores: max |score error| = %.3g (gate %g)", error, gate)
    if not error <= gate:
        raise RuntimeError(f"The export disagrees with zerank: max |score error| {error:.3g} > {gate} "
                           f"({'int8' if quantized else 'fp32'}).")
    return {"max_abs_score_error": error, "score_error_gate": gate}


def render_runtime_readme(src_name: str, spec: RuntimeSpec, raw: dict) -> str:
    """The export's README: what the graph computes and how to score with it without zerank."""
    runtime = {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}[spec.format]
    run = ('session = onnxruntime.InferenceSession(f"{path}/model.onnx")\n'
           'logits = session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0][:, 0]'
           if spec.format == "onnx" else
           'compiled = openvino.Core().compile_model(f"{path}/openvino_model.xml", "CPU")\n'
           'logits = compiled({"input_ids": ids, "attention_mask": mask})["logits"][:, 0]')
    module = "onnxruntime" if spec.format == "onnx" else "openvino"
    return f"""---
library_name: {module}
pipeline_tag: text-classification
tags: [reranker, {spec.format}{", int8" if spec.quantize else ""}]
---

# {src_name} ({runtime} export{", int8 weights" if spec.quantize else ""})

The scoring graph of the zerank reranker `{src_name}`, made by `zerank export --format {spec.format}`. Inputs
`input_ids` and `attention_mask` (int64, batch x sequence, **right-padded**); output `logits` (batch x 1), the
calibrated logit `(yes_logit - {raw.get("score_bias", 0.0)}) / {raw["score_temperature"]}` at each row's last real
token. The relevance score is its sigmoid.

The prompt: render the pair with `chat_template.jinja` (the query is the `query` message, the document the
`document` message), tokenize without special tokens; keep it within {spec.max_length} tokens by cutting the
document, never the end of the prompt. With zerank installed, `zerank.load_reranker(path).predict(pairs)` does all
of this. Without it:

```python
import numpy as np, {module}
from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained(path)
prompts = [tokenizer.apply_chat_template([{{"role": "query", "content": q}}, {{"role": "document", "content": d}}],
                                         tokenize=False) for q, d in pairs]
batch = tokenizer(prompts, add_special_tokens=False, padding=True, padding_side="right", return_tensors="np")
ids, mask = batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64)
{run}
scores = 1 / (1 + np.exp(-logits))
```
"""


def finish_runtime_folder(src: Path, raw: dict, out: Path, args: ExportArguments, graph: str) -> dict:
    """Write the tokenizer, template, ``zerank_runtime.json`` and README of a runtime export whose ``graph`` is in
    ``out``; returns the export's report, with the parity check against the source unless ``--no-verify``."""
    tokenizer = write_tokenizer(src, out)
    spec = RuntimeSpec(format=args.format, graph=graph, max_length=int(tokenizer.model_max_length),
                       max_query_tokens=int(raw.get("max_query_tokens", tokenizer.model_max_length // 2)),
                       quantize=args.quantize, source=args.model,
                       split_special_tokens_in_content=bool(raw.get("split_special_tokens_in_content", True)))
    atomic_write_json(out / RUNTIME_FILE, spec.to_json())
    atomic_write_text(out / CARD_FILE, render_runtime_readme(args.model, spec, raw))
    report = {"format": args.format, "quantize": args.quantize, "size_mb": round(folder_bytes(out) / 1e6, 1)}
    if args.verify:
        report |= verify_runtime(src, out, quantized=args.quantize is not None)
    return report


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def export_onnx(src: Path, raw: dict, out: Path, args: ExportArguments) -> dict:
    """The scoring graph as ONNX (fp32, or int8 weights with ``--quantize int8``)."""
    with tempfile.TemporaryDirectory(prefix="zerank-onnx-") as tmp:
        fp32 = Path(tmp) / ONNX_FILE
        export_onnx_graph(src, fp32)
        if args.quantize == "int8":
            logger.info("Quantizing the MatMul weights to int8 (onnxruntime quantize_dynamic)")
            quantize_onnx_int8(fp32, out / ONNX_FILE)
        else:
            for file in Path(tmp).iterdir():
                shutil.move(file, out / file.name)
    return finish_runtime_folder(src, raw, out, args, ONNX_FILE)


def export_openvino(src: Path, raw: dict, out: Path, args: ExportArguments) -> dict:
    """The scoring graph as OpenVINO IR (converted from the ONNX export; int8 weights through NNCF)."""
    import openvino

    with tempfile.TemporaryDirectory(prefix="zerank-openvino-") as tmp:
        onnx_path = Path(tmp) / ONNX_FILE
        export_onnx_graph(src, onnx_path)
        model = openvino.convert_model(str(onnx_path))
        if args.quantize == "int8":
            import nncf

            logger.info("Compressing the weights to int8 (NNCF compress_weights, INT8_ASYM)")
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        openvino.save_model(model, str(out / OPENVINO_FILE), compress_to_fp16=False)
        del model
    return finish_runtime_folder(src, raw, out, args, OPENVINO_FILE)


def export_gguf(src: Path, raw: dict, out: Path, args: ExportArguments) -> dict:
    """llama.cpp's GGUF, checked through a real llama-server (``zerank.export.gguf``)."""
    from zerank.export.gguf import export_gguf as export_llama_cpp

    return export_llama_cpp(src, raw, out, args)


EXPORTERS: dict[str, Callable[[Path, dict, Path, ExportArguments], dict]] = {
    "vllm": export_vllm, "onnx": export_onnx, "openvino": export_openvino, "gguf": export_gguf}


def export(args: ExportArguments) -> dict:
    """Export ``args.model`` in ``args.format`` to ``args.out``; returns the exporter's report (also written to
    export_report.json). The folder appears at ``args.out`` only after its parity check passed."""
    if args.format not in EXPORTERS:
        raise ValueError(f"--format must be one of {', '.join(EXPORTERS)}, got {args.format!r}.")
    if args.quantize is not None and args.format == "vllm":
        raise ValueError("--quantize applies to --format onnx|openvino; vLLM quantizes at load time "
                         "(its own --quantization option).")
    src = resolve_model_dir(args.model, args.revision, SOURCE_FILE_PATTERNS)
    raw = read_zerank_config(src)
    with staged_output_dir(args.out, args.overwrite) as out:
        report = {"source": args.model, "out": str(args.out), **EXPORTERS[args.format](src, raw, out, args)}
        atomic_write_json(out / REPORT_FILE, report)
    return report


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
