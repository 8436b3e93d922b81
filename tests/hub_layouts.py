"""Folders laid out like the three published zerank checkpoints on the hub, with random weights at the tiny shape.

What each hub repo holds, from the repos' public file listings, config files, cards and commits:

- ``zeroentropy/zerank-1-small`` (Qwen3-1.7B shape, Apache-2.0): ``config.json`` in transformers 4.51's format
  (``torch_dtype``, ``rope_theta``/``rope_scaling``, an ``auto_map`` of ``AutoConfig`` to the publisher's
  ``modeling_zeranker.ZEConfig``), one ``model.safetensors`` (bf16, tied embeddings: no ``lm_head.weight``),
  ``generation_config.json``, the Qwen3 tokenizer files, ``modeling_zeranker.py`` and ``README.md``.
- ``zeroentropy/zerank-1`` (Qwen3-4B shape, CC-BY-NC-4.0): the same files, the weights in two shards with
  ``model.safetensors.index.json``.
- ``zeroentropy/zerank-2`` (Qwen3-4B shape, CC-BY-NC-4.0): config in transformers 4.57's format (``dtype``,
  ``layer_types``), two shards, ``chat_template.jinja``, ``LICENSE`` and the sentence-transformers files of its
  CrossEncoder integration (``modules.json``, ``sentence_bert_config.json``, ``config_sentence_transformers.json``,
  ``1_LogitScore/config.json``).

The weights are random at config/tiny.json's shape (in bf16, as published); the shape fields of the config follow the
tiny shape, every other field and file name follows the publisher's. ``modeling_zeranker.py`` is a stand-in that
raises when imported: a build must neither run nor ship the publisher's code.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from zerank.packaging.convert import make_random_base
from zerank.model.package import ZERANK_FIELDS
from zerank.utils.resources import CHAT_TEMPLATE_FILE, shape_config

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")
SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_window_layers", "vocab_size")
STAND_IN_MODELING = '''"""Stand-in for the publisher's modeling_zeranker.py (its ZEConfig and CrossEncoder predict patch)."""

raise RuntimeError("the publisher's modeling_zeranker.py was imported: zerank build must not run the source's code")
'''
GENERATION_CONFIG = {"bos_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
                     "pad_token_id": 151643, "temperature": 0.6, "top_k": 20, "top_p": 0.95}
CARD_TAGS = ["finance", "legal", "code", "stem", "medical"]


@dataclass(frozen=True)
class Layout:
    hub_id: str
    license: str
    shards: int  # 1: model.safetensors; 2: two shards and an index
    transformers_version: str  # the config format: "4.51.3" (torch_dtype, rope_theta) or "4.57.1" (dtype, layer_types)
    auto_map: bool  # config.json maps AutoConfig to modeling_zeranker.ZEConfig
    sentence_transformers: bool  # the CrossEncoder (Transformer -> LogitScore) files


LAYOUTS = {
    "zerank-1-small": Layout("zeroentropy/zerank-1-small", "apache-2.0", 1, "4.51.3", True, False),
    "zerank-1": Layout("zeroentropy/zerank-1", "cc-by-nc-4.0", 2, "4.51.3", True, False),
    "zerank-2": Layout("zeroentropy/zerank-2", "cc-by-nc-4.0", 2, "4.57.1", False, True),
}


def publisher_config(layout: Layout) -> dict:
    """config.json as the publisher's: a Qwen3ForCausalLM config in the layout's transformers format, tiny shape."""
    tiny = json.loads(shape_config("tiny").read_text())
    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "max_position_embeddings": 40960,
        "model_type": "qwen3",
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "transformers_version": layout.transformers_version,
        "use_cache": True,
        "use_sliding_window": False,
        **{k: tiny[k] for k in SHAPE_FIELDS},
    }
    if layout.transformers_version.startswith("4.51"):
        config["torch_dtype"] = "bfloat16"
    else:
        config["dtype"] = "bfloat16"
        config["layer_types"] = ["full_attention"] * tiny["num_hidden_layers"]
    if layout.auto_map:
        config["auto_map"] = {"AutoConfig": "modeling_zeranker.ZEConfig"}
    return dict(sorted(config.items()))


def publisher_card(name: str, layout: Layout) -> str:
    tags = "".join(f"- {tag}\n" for tag in CARD_TAGS)
    return (f"---\nlicense: {layout.license}\nlanguage:\n- en\nbase_model:\n- Qwen/Qwen3-4B\n"
            f"pipeline_tag: text-ranking\ntags:\n{tags}library_name: sentence-transformers\n---\n\n"
            f"# Releasing {layout.hub_id}\n\nA test fixture laid out like {name} (random weights).\n")


def write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def make_hub_layout(name: str, out: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A folder at ``out`` laid out like the hub repo of ``name`` (zerank-1-small, zerank-1, zerank-2)."""
    layout = LAYOUTS[name]
    out.mkdir(parents=True)
    shape = {k: v for k, v in json.loads(shape_config("tiny").read_text()).items() if k not in ZERANK_FIELDS}
    shape["dtype"] = "bfloat16"
    shape_file = out.parent / f".{name}-shape.json"
    write_json(shape_file, shape)
    # The embedding (151936 x 64 in bf16, 19 MB) fills one shard, the layers the other.
    make_random_base(shape_file, out, seed, max_shard_size_mb=10 if layout.shards == 2 else 2000)
    shape_file.unlink()
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) == layout.shards, shards
    write_json(out / "config.json", publisher_config(layout))
    write_json(out / "generation_config.json",
               {**GENERATION_CONFIG, "transformers_version": layout.transformers_version})
    for file in TOKENIZER_FILES:
        shutil.copy2(tokenizer_dir / file, out / file)
    (out / "modeling_zeranker.py").write_text(STAND_IN_MODELING)
    (out / "README.md").write_text(publisher_card(name, layout))
    if layout.sentence_transformers:
        write_json(out / "modules.json", [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
            {"idx": 1, "name": "1", "path": "1_LogitScore",
             "type": "sentence_transformers.cross_encoder.modules.logit_score.LogitScore"},
        ])
        write_json(out / "1_LogitScore" / "config.json", {"true_token_id": 9454, "false_token_id": None})
        write_json(out / "sentence_bert_config.json", {
            "transformer_task": "text-generation",
            "modality_config": {"text": {"method": "forward", "method_output_name": "logits"},
                                "message": {"method": "forward", "method_output_name": "logits", "format": "flat"}},
            "module_output_name": "causal_logits",
            "processing_kwargs": {"chat_template": {"add_generation_prompt": True}},
        })
        write_json(out / "config_sentence_transformers.json", {
            "__version__": {"sentence_transformers": "5.4.0"}, "activation_fn": "torch.nn.modules.linear.Identity",
            "default_prompt_name": None, "model_type": "CrossEncoder", "prompts": {},
        })
        shutil.copy2(CHAT_TEMPLATE_FILE, out / "chat_template.jinja")
        (out / "LICENSE").write_text("Attribution-NonCommercial 4.0 International (test fixture stand-in)\n")
    return out


def serve_layout(hub, folder: Path, repo_id: str) -> str:
    """Publish ``folder`` as one commit of ``repo_id`` on a ``tests/hub_server.HubServer``; returns the commit id."""
    from hub_server import DEFAULT_GITATTRIBUTES, File, Repo

    repo = Repo(repo_id=repo_id, repo_type="model", private=False)
    hub.repos[("model", repo_id)] = repo
    files = {".gitattributes": File(DEFAULT_GITATTRIBUTES.encode(), lfs=False)}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relpath = path.relative_to(folder).as_posix()
        files[relpath] = File(path.read_bytes(), lfs=relpath.endswith(".safetensors"))
    commit = hub.new_commit(repo, None, "Upload folder using huggingface_hub", files)
    repo.branches["main"] = commit.oid
    return commit.oid
