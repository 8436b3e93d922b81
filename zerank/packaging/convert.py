"""Convert a Qwen3 causal-LM checkpoint (or random weights of a shape) into a verified zerank package.

The backbone weights are copied shard by shard (never two copies of the model in memory), the LM head is dropped
and only its "Yes" row is kept as ``score.weight``. The folder gets the remote-code files, the tokenizer, zerank's
chat template, the sentence-transformers configuration and a rendered model card, and is then verified: loaded
through ``CrossEncoder``, its logit x temperature + bias must equal the source causal LM's "Yes" logit.

The source is a Qwen3ForCausalLM folder or hub repo, for example a published zerank checkpoint (the presets
``zerank-1-small``, ``zerank-1``, ``zerank-2`` name their hub repo, shape, calibration and licence). Whatever else the
source ships (its own modeling code, sentence-transformers files) is neither run nor copied. The package records
where its weights came from and under which licence (see ``zerank.model.package``).

Command: ``zerank build --base zerank-1-small --out build/zerank-1-small``,
``zerank build --base Qwen/Qwen3-4B --license apache-2.0 --out build/qwen3-4b`` (an untrained starting point for
fine-tuning) or ``zerank build --random tiny --out build/tiny`` (random weights for tests and demos).
"""

from __future__ import annotations

import gc
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, Qwen3Config, Qwen3ForCausalLM

from modeling_zerank import ZerankConfig
from zerank.model.loading import load_reranker
from zerank.model.package import (
    AUTO_MAP,
    CARD_FILE,
    PACKAGE_LICENSE,
    PROBE_PAIRS,
    WEIGHTS_FILE,
    WEIGHTS_INDEX,
    ZERANK_FIELDS,
    card_license,
    copy_package_files,
    is_hub_id,
    package_license,
    render_model_card,
    rendered_prompts,
    resolve_model_dir,
    snapshot_revision,
    stored_bytes,
    weight_map,
)
from zerank.model.pair_template import install_pair_template, template_pieces
from zerank.model.scoring import raw_logit
from zerank.packaging.arguments import BuildArguments
from zerank.utils.resources import (
    CHAT_TEMPLATE_FILE,
    Preset,
    default_tokenizer_dir,
    find_preset,
    presets,
    shape_config,
)
from zerank.utils.system import atomic_write_json, atomic_write_text, peak_rss_mb, staged_output_dir

logger = logging.getLogger(__name__)

MAX_LOGIT_ERROR = 1e-4  # fp32 parity of the built model with the source causal LM's "Yes" logit
BASE_FILE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "tokenizer*", CARD_FILE]
REPORT_FILE = "build_report.json"
# Config fields a preset's source must share with the preset's shape file.
SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size")


@dataclass(frozen=True)
class Source:
    """The checkpoint a build converts: its local folder, where it came from, and its card's licence."""

    folder: Path
    model: str | None  # hub id or resolved local path; None for random weights
    revision: str | None  # hub commit when downloaded
    license: str | None  # the card's `license:` (or the preset's, for a preset whose card states none)
    hub_id: str | None
    preset: Preset | None


def resolve_source(base: str, revision: str | None) -> Source:
    """``--base`` as a folder: a preset name (its hub repo), a hub id (downloaded at ``revision``) or a local path."""
    preset = find_preset(base, presets()) if not Path(base).exists() else None
    # A preset's name downloads its current repo; a hub id (current or former: the hub redirects) as given.
    model = preset.hub_id if preset and base == preset.name else base
    folder = resolve_model_dir(model, revision, BASE_FILE_PATTERNS)
    hub_id = model if is_hub_id(model) else None
    license_id = card_license(folder)
    if preset is not None and license_id is None:
        license_id = preset.license
    elif preset is not None and license_id != preset.license:
        logger.warning("%s's card states licence %s, not %s as when this preset was written: using the card's",
                       model, license_id, preset.license)
    return Source(folder=folder, model=hub_id or str(folder.resolve()),
                  revision=snapshot_revision(folder) if hub_id else None, license=license_id, hub_id=hub_id,
                  preset=preset)


def make_random_base(config_path: Path, out_dir: Path, seed: int, max_shard_size_mb: int) -> Path:
    """Save a randomly initialised Qwen3ForCausalLM with the shape of ``config_path`` to ``out_dir``."""
    raw = json.loads(config_path.read_text())
    shape = {k: v for k, v in raw.items() if k not in ZERANK_FIELDS and k != "model_type"}
    dtype = getattr(torch, shape.pop("dtype", "float32"))
    torch.manual_seed(seed)
    config = Qwen3Config(**shape)
    config.architectures = ["Qwen3ForCausalLM"]
    # Initialise directly in the target dtype: a 4B model in fp32 first would need twice the memory.
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = Qwen3ForCausalLM(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.save_pretrained(out_dir, max_shard_size=f"{max_shard_size_mb}MB")
    del model
    gc.collect()
    atomic_write_text(out_dir / CARD_FILE, f"---\nlicense: {PACKAGE_LICENSE}\n---\n\nRandom (untrained) weights with "
                                           f"the shape of {config_path.name}, created by zerank.\n")
    return out_dir


def source_config(base_dir: Path, preset: Preset | None = None) -> dict:
    """The raw config of a Qwen3ForCausalLM checkpoint; anything else, or a preset's source of another shape, is
    refused."""
    path = base_dir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{base_dir} has no config.json: not a transformers checkpoint.")
    raw = json.loads(path.read_text())
    if raw.get("model_type") != "qwen3" or "Qwen3ForCausalLM" not in (raw.get("architectures") or []):
        raise ValueError(
            f"{base_dir} is not a Qwen3ForCausalLM checkpoint "
            f"(model_type={raw.get('model_type')!r}, architectures={raw.get('architectures')!r})."
        )
    if preset is not None:
        shape = json.loads(shape_config(preset.shape).read_text())
        wrong = {k: (raw.get(k), shape[k]) for k in SHAPE_FIELDS if raw.get(k) != shape[k]}
        if wrong:
            details = ", ".join(f"{k} {got} (expected {want})" for k, (got, want) in wrong.items())
            raise ValueError(f"{preset.hub_id} does not have the shape of {preset.name} ({preset.shape}.json): "
                             f"{details}.")
    return raw


def check_vocabulary(base_dir: Path, raw: dict, tokenizer: PreTrainedTokenizerBase, yes_token_id: int) -> None:
    """The LM head (or tied embedding) has ``vocab_size`` rows, one for each token of the tokenizer, and a "Yes" row."""
    tensors_at = weight_map(base_dir)
    head = "lm_head.weight" if "lm_head.weight" in tensors_at else "model.embed_tokens.weight"
    if head not in tensors_at:
        raise ValueError(f"{base_dir} has neither lm_head.weight nor model.embed_tokens.weight: no 'Yes' row to keep.")
    with safe_open(base_dir / tensors_at[head], framework="pt") as f:
        rows = f.get_slice(head).get_shape()[0]
    if rows != raw.get("vocab_size"):
        raise ValueError(f"{base_dir}: {head} has {rows} rows but config.json says vocab_size={raw.get('vocab_size')}.")
    if len(tokenizer) > rows:
        raise ValueError(f"{base_dir}: the tokenizer has {len(tokenizer)} tokens but the checkpoint's vocabulary only "
                         f"{rows}: the tokenizer does not belong to these weights.")
    if not 0 <= yes_token_id < rows:
        raise ValueError(f"{base_dir}: the 'Yes' token id {yes_token_id} has no row in {head} ({rows} rows).")


def make_config(raw: dict, args: BuildArguments, yes_token_id: int, preset: Preset | None = None) -> ZerankConfig:
    """The zerank config of a Qwen3ForCausalLM config: its shape, the scoring fields of a ``--random`` shape file or
    of a preset, the "Yes" token and the calibration flags, with the ``auto_map`` to the remote code."""
    dropped = ("model_type", "architectures", "transformers_version", "id2label", "label2id", "num_labels", "auto_map")
    fields = {k: v for k, v in raw.items() if k not in dropped}
    scoring_shape = args.random if args.random is not None else preset.shape if preset else None
    if scoring_shape is not None:
        shape = json.loads(shape_config(scoring_shape).read_text())
        fields.update({k: v for k, v in shape.items() if k in ZERANK_FIELDS})
    if preset is not None:
        if yes_token_id != fields["yes_token_id"]:
            raise ValueError(f"The tokenizer encodes 'Yes' as {yes_token_id}; {preset.name} scores row "
                             f"{fields['yes_token_id']}: the tokenizer does not belong to {preset.hub_id}.")
        fields.update(score_temperature=preset.score_temperature, score_bias=preset.score_bias)
    fields["yes_token_id"] = yes_token_id
    if args.score_temperature is not None:
        fields["score_temperature"] = args.score_temperature
    if args.score_bias is not None:
        fields["score_bias"] = args.score_bias
    config = ZerankConfig(**fields)
    config.architectures = ["ZerankForSequenceClassification"]
    config.auto_map = dict(AUTO_MAP)
    return config


def convert_weights(base_dir: Path, out_dir: Path, yes_token_id: int, max_shard_bytes: int) -> dict[str, int]:
    """Copy the backbone shard by shard and write ``score.weight`` = the "Yes" row of the LM head.

    Returns the number of bytes per output file. Tensors are read one at a time from memory-mapped files and an
    output shard is flushed as soon as it reaches ``max_shard_bytes``, so memory stays near one shard.
    """
    tensors_at = weight_map(base_dir)
    # Tied checkpoints (Qwen3 up to 4B) store no lm_head: its rows are the input embeddings.
    yes_source = "lm_head.weight" if "lm_head.weight" in tensors_at else "model.embed_tokens.weight"
    if yes_source not in tensors_at:
        raise KeyError(f"{base_dir} has neither lm_head.weight nor model.embed_tokens.weight.")
    names = sorted(name for name in tensors_at if name != "lm_head.weight")
    if not all(name.startswith("model.") for name in names):
        raise ValueError(f"Unexpected tensor names in {base_dir}: {[n for n in names if not n.startswith('model.')]}")

    with safe_open(base_dir / tensors_at[yes_source], framework="pt") as f:
        rows = f.get_slice(yes_source)
        vocab = rows.get_shape()[0]
        if not 0 <= yes_token_id < vocab:
            raise ValueError(f"yes_token_id {yes_token_id} is outside the LM head's {vocab} rows.")
        score = rows[yes_token_id : yes_token_id + 1].clone()

    groups: list[list[str]] = [[]]
    group_bytes = 0
    for name in names:
        with safe_open(base_dir / tensors_at[name], framework="pt") as f:
            tensor_slice = f.get_slice(name)
            size = stored_bytes(tensor_slice)
        if groups[-1] and group_bytes + size > max_shard_bytes:
            groups.append([])
            group_bytes = 0
        groups[-1].append(name)
        group_bytes += size
    groups[-1].append("score.weight")

    total = len(groups)
    files: dict[str, int] = {}
    new_map: dict[str, str] = {}
    for i, group in enumerate(tqdm(groups, desc="Writing shards", unit="shard")):
        file_name = WEIGHTS_FILE if total == 1 else f"model-{i + 1:05d}-of-{total:05d}.safetensors"
        tensors = {}
        for name in group:
            if name == "score.weight":
                tensors[name] = score
                continue
            with safe_open(base_dir / tensors_at[name], framework="pt") as f:
                tensors[name] = f.get_tensor(name)
        save_file(tensors, out_dir / file_name, metadata={"format": "pt"})
        files[file_name] = sum(t.numel() * t.element_size() for t in tensors.values())
        new_map.update(dict.fromkeys(group, file_name))
        del tensors
        gc.collect()
    if total > 1:
        index = {"metadata": {"total_size": sum(files.values())}, "weight_map": dict(sorted(new_map.items()))}
        atomic_write_json(out_dir / WEIGHTS_INDEX, index)
    return files


def write_tokenizer(tokenizer_src: str | Path, out_dir: Path, max_length: int) -> PreTrainedTokenizerBase:
    """Save the tokenizer with zerank's chat template (as chat_template.jinja), its pair template (so that
    ``tokenizer(query, document)`` renders the prompt) and the context length."""
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_src))
    tokenizer.chat_template = CHAT_TEMPLATE_FILE.read_text()
    tokenizer.model_max_length = max_length
    install_pair_template(tokenizer)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


@torch.inference_mode()
def causal_lm_yes_logits(base_dir: Path, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]],
                         yes_token_id: int) -> torch.Tensor:
    """The source causal LM's "Yes" logit at the last position of each rendered pair (fp32, one pair at a time)."""
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model.eval()
    logits = []
    for text in rendered_prompts(tokenizer, pairs):
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        logits.append(model(input_ids=ids, logits_to_keep=1).logits[0, -1, yes_token_id])
    del model
    gc.collect()
    return torch.stack(logits)


def verify(base_dir: Path, out_dir: Path, pairs: Sequence[tuple[str, str]] = PROBE_PAIRS,
           tokenizer: PreTrainedTokenizerBase | None = None) -> float:
    """Max |built logit x T + b - causal LM "Yes" logit| over ``pairs``, both in fp32, loaded one at a time.

    The causal LM reads the pairs as ``tokenizer`` (default: the built folder's) renders them."""
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(out_dir, trust_remote_code=True)
    config = ZerankConfig.from_pretrained(out_dir)
    expected = causal_lm_yes_logits(base_dir, tokenizer, pairs, config.yes_token_id)
    model = load_reranker(str(out_dir), device="cpu", dtype="float32")
    calibrated = model.predict(pairs, activation_fn=torch.nn.Identity(), convert_to_tensor=True).float().cpu()
    raw = raw_logit(calibrated, config.score_temperature, config.score_bias)
    return float((raw - expected).abs().max())


def build(args: BuildArguments) -> dict:
    """Build the package ``args.out`` and verify it; returns the report (also written to build_report.json).

    The package is written and verified in a hidden staging folder beside ``args.out`` and renamed into place only
    when verification passes, so a failed or killed build never leaves a folder that loads (see
    ``system.staged_output_dir``)."""
    with staged_output_dir(args.out, args.overwrite) as out, \
            tempfile.TemporaryDirectory(prefix="zerank-random-base-") as tmp:
        if args.random is not None:
            shape = shape_config(args.random)
            logger.info("Creating a random Qwen3ForCausalLM with the shape of %s (seed %d)", shape, args.seed)
            base_dir = make_random_base(shape, Path(tmp), args.seed, args.max_shard_size_mb)
            base_name = f"random weights, shape of {shape.name} (UNTRAINED)"
            source = Source(folder=base_dir, model=None, revision=None, license=PACKAGE_LICENSE, hub_id=None,
                            preset=None)
        else:
            source = resolve_source(args.base, args.revision)
            base_dir, base_name = source.folder, source.model
        raw = source_config(base_dir, source.preset)
        license_id = package_license(source.license, args.license, base_name)
        rss_before = peak_rss_mb()

        # Random weights have no tokenizer of their own: the bundled Qwen3 one, unless --tokenizer names another.
        tokenizer_src = args.tokenizer or (default_tokenizer_dir() if args.random is not None else base_dir)
        tokenizer = write_tokenizer(tokenizer_src, out, args.max_length)
        yes_ids = tokenizer.encode(args.yes_token, add_special_tokens=False)
        if len(yes_ids) != 1:
            raise ValueError(f"--yes-token {args.yes_token!r} is not a single token (ids {yes_ids}).")
        check_vocabulary(base_dir, raw, tokenizer, yes_ids[0])
        config = make_config(raw, args, yes_ids[0], source.preset)
        config.prompt_prefix_ids, _, config.prompt_suffix_ids = template_pieces(tokenizer)
        config.source_model = source.model
        config.source_revision = source.revision
        config.source_license = license_id
        config.save_pretrained(out)
        logger.info("Converting weights from %s", base_dir)
        files = convert_weights(base_dir, out, config.yes_token_id, args.max_shard_size_mb * 1024 * 1024)
        copy_package_files(out)
        card = render_model_card(
            config, repo_id=args.repo_id or str(args.out), base_model=base_name, max_length=args.max_length,
            base_model_id=args.base_model_id or source.hub_id, untrained=args.random is not None,
        )
        atomic_write_text(out / CARD_FILE, card)
        checkpoint_mb = sum(files.values()) / 1e6
        report = {
            "out": str(args.out),
            "base": base_name,
            "source_model": source.model,
            "source_revision": source.revision,
            "source_card_license": source.license,
            "license": license_id,
            "checkpoint_mb": round(checkpoint_mb, 1),
            "build_peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_before_convert_mb": round(rss_before, 1),
            "files": files,
        }
        logger.info("Wrote %d weight file(s), %.1f MB; peak RSS %.1f MB", len(files), checkpoint_mb, peak_rss_mb())
        if args.verify:
            report["max_abs_logit_error"] = verify(base_dir, out, tokenizer=tokenizer)
            report["verify_peak_rss_mb"] = round(peak_rss_mb(), 1)
            logger.info("Parity with the causal LM's 'Yes' logit: max |error| = %.3g", report["max_abs_logit_error"])
            if not report["max_abs_logit_error"] <= MAX_LOGIT_ERROR:
                raise RuntimeError(
                    f"Built model disagrees with the source causal LM: max |error| "
                    f"{report['max_abs_logit_error']:.3g} > {MAX_LOGIT_ERROR} (fp32)."
                )
        atomic_write_json(out / REPORT_FILE, report)
    return report


def main(args: BuildArguments) -> dict:
    """``zerank build``: build, verify, print the report (without the per-file sizes) and return it."""
    torch.manual_seed(args.seed)
    report = build(args)
    print(json.dumps({k: v for k, v in report.items() if k != "files"}, indent=2))
    return report
