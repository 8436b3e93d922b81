"""zerank build (zerank.convert): shard-by-shard conversion, the "Yes" row, self-verification, the package files."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from safetensors import safe_open
from safetensors.torch import load_file

from zerank.arguments import BuildArguments
from zerank.convert import build, make_random_base
from zerank.resources import CHAT_TEMPLATE_FILE, shape_config


def test_built_folder_is_a_complete_package(tiny_model_dir):
    names = {p.name for p in tiny_model_dir.iterdir()}
    expected = {"config.json", "model.safetensors", "modeling_zerank.py", "zerank_st.py", "tokenizer.json",
                "tokenizer_config.json", "chat_template.jinja", "README.md", "modules.json",
                "sentence_bert_config.json", "config_sentence_transformers.json"}
    assert expected <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["ZerankForSequenceClassification"] and config["model_type"] == "zerank"
    assert config["auto_map"]["AutoConfig"] == "modeling_zerank.ZerankConfig"
    assert (tiny_model_dir / "modeling_zerank.py").read_text() == (ROOT / "modeling_zerank.py").read_text()
    assert (tiny_model_dir / "chat_template.jinja").read_text() == CHAT_TEMPLATE_FILE.read_text()


def test_score_row_is_the_tied_embedding_row_and_lm_head_is_dropped(tiny_base_dir, tiny_model_dir):
    built = load_file(tiny_model_dir / "model.safetensors")
    base = load_file(tiny_base_dir / "model.safetensors")
    assert "lm_head.weight" not in built and built["score.weight"].shape == (1, 64)
    assert torch.equal(built["score.weight"][0], base["model.embed_tokens.weight"][9454])
    assert set(built) - {"score.weight"} == set(base) - {"lm_head.weight"}


def test_untied_lm_head_and_sharding(tmp_path, tokenizer_dir):
    config = json.loads(shape_config("tiny").read_text())
    config["tie_word_embeddings"] = False
    (tmp_path / "untied.json").write_text(json.dumps(config))
    base = make_random_base(tmp_path / "untied.json", tmp_path / "base", seed=1, max_shard_size_mb=20)
    assert (base / "model.safetensors.index.json").exists()
    out = tmp_path / "out"
    report = build(BuildArguments(out=out, base=str(base), tokenizer=str(tokenizer_dir), max_shard_size_mb=10))
    assert report["max_abs_logit_error"] <= 1e-4
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2 and "lm_head.weight" not in index["weight_map"]
    base_index = json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    with safe_open(base / base_index["lm_head.weight"], "pt") as f:
        yes_row = f.get_tensor("lm_head.weight")[9454]
    with safe_open(out / index["weight_map"]["score.weight"], "pt") as f:
        assert torch.equal(f.get_tensor("score.weight")[0], yes_row)


def test_refuses_non_qwen3_and_existing_output(tiny_base_dir, tiny_model_dir, tmp_path, tokenizer_dir):
    with pytest.raises(FileExistsError, match="--overwrite"):
        build(BuildArguments(out=tiny_model_dir, base=str(tiny_base_dir), tokenizer=str(tokenizer_dir)))
    not_qwen = tmp_path / "bert"
    not_qwen.mkdir()
    (not_qwen / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ValueError, match="not a Qwen3ForCausalLM"):
        build(BuildArguments(out=tmp_path / "o", base=str(not_qwen), tokenizer=str(tokenizer_dir)))
    with pytest.raises(ValueError, match="not a single token"):
        build(BuildArguments(out=tmp_path / "o2", base=str(tiny_base_dir), tokenizer=str(tokenizer_dir),
                        yes_token="Yes indeed"))


def test_model_card_is_rendered(tiny_model_dir):
    card = (tiny_model_dir / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: text-ranking" in card
    assert "library_name: sentence-transformers" in card and "{{" not in card


def test_cli_random_build(tmp_path, tokenizer_dir):
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "zerank.cli", "build", "--random", "tiny",
         "--tokenizer", str(tokenizer_dir), "--out", str(out)],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["max_abs_logit_error"] <= 1e-4 and report["build_peak_rss_mb"] > 0
    assert "UNTRAINED" in (out / "README.md").read_text()


def test_cli_needs_a_tokenizer_for_random(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "zerank.cli", "build", "--random", "tiny", "--out", str(tmp_path)],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "--random needs --tokenizer" in result.stderr
