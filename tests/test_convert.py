"""zerank build (zerank.packaging.convert): shard-by-shard conversion, the "Yes" row, self-verification, the package
files."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from hub_layouts import LAYOUTS, make_hub_layout, serve_layout
from hub_server import HubServer
from huggingface_hub import metadata_load
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from zerank.model.loading import load_reranker
from zerank.model.package import rendered_prompts
from zerank.packaging import convert
from zerank.packaging.arguments import BuildArguments
from zerank.packaging.convert import build, make_random_base
from zerank.utils.resources import (
    CHAT_TEMPLATE_FILE,
    ST_CONFIG_DIR,
    Preset,
    find_preset,
    presets,
    shape_config,
    shape_names,
)


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


def test_cli_random_build_uses_the_bundled_tokenizer(tmp_path, tokenizer_dir):
    out = tmp_path / "cli"
    result = subprocess.run(  # no --tokenizer: random weights get the bundled Qwen3 tokenizer
        [sys.executable, "-m", "zerank.cli", "build", "--random", "tiny", "--out", str(out)],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["max_abs_logit_error"] <= 1e-4 and report["build_peak_rss_mb"] > 0
    assert "UNTRAINED" in (out / "README.md").read_text()
    built, bundled = (json.loads((d / "tokenizer.json").read_text()) for d in (out, tokenizer_dir))
    assert built["model"]["vocab"] == bundled["model"]["vocab"]


# --- the published checkpoints: hub layouts, licences, presets, the hub download path ---


@pytest.fixture(scope="module")
def hub_sources(tmp_path_factory, tokenizer_dir) -> dict:
    """Folders laid out like zeroentropy/zerank-1-small, zerank-1 and zerank-2 (tests/hub_layouts.py)."""
    root = tmp_path_factory.mktemp("hub-layouts")
    return {name: make_hub_layout(name, root / name, tokenizer_dir, seed=i) for i, name in enumerate(LAYOUTS)}


@pytest.fixture(scope="module")
def hub_builds(hub_sources, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("hub-builds")
    return {name: (out / name, build(BuildArguments(out=out / name, base=str(source))))
            for name, source in hub_sources.items()}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_published_layouts_build_with_parity_and_their_licence(name, hub_sources, hub_builds):
    out, report = hub_builds[name]
    assert report["max_abs_logit_error"] <= 1e-4
    config = json.loads((out / "config.json").read_text())
    assert config["source_license"] == report["license"] == LAYOUTS[name].license
    assert config["source_model"] == str(hub_sources[name].resolve()) and config["source_revision"] is None
    card = metadata_load(out / "README.md")
    assert card["license"] == LAYOUTS[name].license
    # A local folder has no hub id: the card names none unless --base-model-id gives it.
    assert "base_model" not in card
    text = (out / "README.md").read_text()
    assert "What it kept: the backbone weights, unchanged." in text
    assert ("Non-commercial use only" in text) == (LAYOUTS[name].license != "apache-2.0")
    # The publisher's code and sentence-transformers head are neither copied nor run (the stand-in raises on import).
    names = {p.name for p in out.iterdir()}
    assert "modeling_zeranker.py" not in names and "1_LogitScore" not in names
    for file in ST_CONFIG_DIR.iterdir():
        assert (out / file.name).read_bytes() == file.read_bytes()


def test_scores_are_the_publishers_formula_on_the_source(hub_sources, hub_builds, tokenizer):
    """zerank-2's published score, sigmoid(Yes logit / 5) at the last position, from the source causal LM."""
    from transformers import AutoModelForCausalLM

    source = AutoModelForCausalLM.from_pretrained(hub_sources["zerank-2"], dtype=torch.float32)
    pairs = [("What is 2+2?", "4"), ("What is 2+2?", "The answer is definitely 1 million")]
    with torch.inference_mode():
        expected = [torch.sigmoid(source(**tokenizer(text, return_tensors="pt", add_special_tokens=False))
                                  .logits[0, -1, 9454] / 5).item() for text in rendered_prompts(tokenizer, pairs)]
    model = load_reranker(str(hub_builds["zerank-2"][0]), device="cpu", dtype="float32")
    assert model.predict(pairs) == pytest.approx(expected, abs=1e-6)


def test_a_non_commercial_source_is_never_relicensed_permissively(hub_sources, tmp_path):
    with pytest.raises(ValueError, match="cc-by-nc-4.0 .non-commercial.: .* cannot be relicensed apache-2.0"):
        build(BuildArguments(out=tmp_path / "o", base=str(hub_sources["zerank-1"]), license="apache-2.0"))
    assert not (tmp_path / "o").exists()


def test_a_source_without_a_licence_needs_one(hub_sources, tmp_path):
    source = tmp_path / "no-card"
    shutil.copytree(hub_sources["zerank-1-small"], source)
    (source / "README.md").unlink()
    with pytest.raises(ValueError, match="states no licence .* pass --license"):
        build(BuildArguments(out=tmp_path / "o", base=str(source)))
    report = build(BuildArguments(out=tmp_path / "o", base=str(source), license="mit", verify=False,
                                  base_model_id="acme/base"))
    assert report["license"] == "mit" and report["source_card_license"] is None
    card = metadata_load(tmp_path / "o" / "README.md")
    assert card["license"] == "mit" and card["base_model"] == "acme/base"
    assert json.loads((tmp_path / "o" / "config.json").read_text())["source_license"] == "mit"


def test_refuses_mismatched_vocabulary_and_a_missing_yes_row(hub_sources, tmp_path, tokenizer_dir):
    wrong_rows = tmp_path / "wrong-rows"
    shutil.copytree(hub_sources["zerank-1-small"], wrong_rows)
    config = json.loads((wrong_rows / "config.json").read_text())
    (wrong_rows / "config.json").write_text(json.dumps({**config, "vocab_size": 151669}))
    with pytest.raises(ValueError, match="151936 rows but config.json says vocab_size=151669"):
        build(BuildArguments(out=tmp_path / "o1", base=str(wrong_rows)))

    small = json.loads(shape_config("tiny").read_text())
    (tmp_path / "small.json").write_text(json.dumps({**small, "vocab_size": 4096}))
    small_vocab = make_random_base(tmp_path / "small.json", tmp_path / "small-vocab", seed=0, max_shard_size_mb=100)
    with pytest.raises(ValueError, match="tokenizer has 151669 tokens but the checkpoint's vocabulary only 4096"):
        build(BuildArguments(out=tmp_path / "o2", base=str(small_vocab), tokenizer=str(tokenizer_dir)))

    headless = tmp_path / "headless"
    shutil.copytree(hub_sources["zerank-1-small"], headless)
    save_file({"model.norm.weight": torch.ones(64)}, headless / "model.safetensors")
    with pytest.raises(ValueError, match="neither lm_head.weight nor model.embed_tokens.weight: no 'Yes' row"):
        build(BuildArguments(out=tmp_path / "o3", base=str(headless)))
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))


def test_presets_name_the_published_checkpoints():
    found = presets()
    assert {name: (p.hub_id, p.license) for name, p in found.items()} == {
        "zerank-1-small": ("zeroentropy/zerank-1-small-reranker", "apache-2.0"),
        "zerank-1": ("zeroentropy/zerank-1-reranker", "cc-by-nc-4.0"),
        "zerank-2": ("zeroentropy/zerank-2-reranker", "cc-by-nc-4.0"),
    }
    # The former ids (the hub redirects them) name the same presets.
    for name in found:
        assert find_preset(name) == find_preset(f"zeroentropy/{name}") == find_preset(f"zeroentropy/{name}-reranker")
    assert find_preset("zeroentropy/zerank-3") is None and find_preset("Qwen/Qwen3-4B") is None
    shapes = {name: json.loads(shape_config(p.shape).read_text()) for name, p in found.items()}
    assert shapes["zerank-1-small"]["hidden_size"] == 2048 and shapes["zerank-1-small"]["num_hidden_layers"] == 28
    assert all(shapes[n]["hidden_size"] == 2560 and shapes[n]["num_hidden_layers"] == 36 for n in ("zerank-1",
                                                                                                     "zerank-2"))
    assert all((p.score_temperature, p.score_bias) == (5.0, 0.0) for p in found.values())
    assert "presets" not in shape_names()


def test_presets_resolve_to_the_hub_repo_with_their_calibration(hub_sources, tmp_path, monkeypatch):
    downloads = []

    def fake_download(model, revision, patterns):  # the hub download itself is tested against hub_server below
        downloads.append((model, revision))
        return hub_sources["zerank-1-small"]

    monkeypatch.setattr(convert, "resolve_model_dir", fake_download)
    with pytest.raises(ValueError, match=r"zeroentropy/zerank-1-small-reranker does not have the shape of "
                                         r"zerank-1-small \(zerank-1-small.json\): hidden_size 64 \(expected 2048\)"):
        build(BuildArguments(out=tmp_path / "refused", base="zerank-1-small", revision="v1"))
    with pytest.raises(ValueError, match=r"does not have the shape of zerank-1-small"):
        build(BuildArguments(out=tmp_path / "refused", base="zeroentropy/zerank-1-small", revision="v1"))
    assert downloads == [("zeroentropy/zerank-1-small-reranker", "v1"), ("zeroentropy/zerank-1-small", "v1")]
    assert not (tmp_path / "refused").exists()

    tiny = Preset(name="zerank-1-small", hub_id="zeroentropy/zerank-1-small", shape="tiny", score_temperature=4.0,
                  score_bias=1.0, license="cc-by-nc-4.0")
    monkeypatch.setattr(convert, "presets", lambda: {"zerank-1-small": tiny})
    report = build(BuildArguments(out=tmp_path / "o", base="zerank-1-small", verify=False))
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert (config["score_temperature"], config["score_bias"], config["yes_token_id"]) == (4.0, 1.0, 9454)
    assert config["source_model"] == "zeroentropy/zerank-1-small"
    # The card's licence wins over the preset's (a publisher may relicense); the card names the hub repo.
    assert report["license"] == config["source_license"] == "apache-2.0"
    card = metadata_load(tmp_path / "o" / "README.md")
    assert card["base_model"] == "zeroentropy/zerank-1-small" and card["license"] == "apache-2.0"


REPO = "example/tiny-zerank-base"


def test_hub_download_pins_the_revision(hub_sources, tmp_path):
    """The real huggingface_hub client (snapshot_download at a revision) against tests/hub_server.py. The tiny
    layout is served under an id that is no preset's (a preset's repo must have the preset's shape)."""
    with HubServer(token="hf_unused") as hub:
        commit = serve_layout(hub, hub_sources["zerank-1-small"], REPO)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf"))
        out = tmp_path / "zerank-1-small"
        result = subprocess.run(
            [sys.executable, "-m", "zerank.cli", "build", "--base", REPO, "--revision", commit,
             "--out", str(out), "--no-verify"], env=env, check=False, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert not hub.unknown_requests
    report = json.loads((out / "build_report.json").read_text())
    assert report["source_revision"] == commit and report["license"] == "apache-2.0"
    # The download is the source's own files, so the weights are the fixture's (parity is checked on it above).
    assert load_file(out / "model.safetensors")["score.weight"].shape == (1, 64)
    config = json.loads((out / "config.json").read_text())
    assert (config["source_model"], config["source_revision"]) == (REPO, commit)
    card = metadata_load(out / "README.md")
    assert card["base_model"] == REPO and card["license"] == "apache-2.0"
    assert f"revision `{commit}`" in (out / "README.md").read_text()
