"""zerank export --format vllm: the export loads as a plain Qwen3ForSequenceClassification and scores like zerank."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PARITY_PAIRS
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sentence_transformers import CrossEncoder
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Qwen3ForSequenceClassification

from zerank import cli
from zerank.export.arguments import ExportArguments
from zerank.export.exporter import export
from zerank.utils.resources import CHAT_TEMPLATE_FILE

PAIRS = PARITY_PAIRS
ST_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json", "zerank_st.py",
            "modeling_zerank.py")


def exported_scores(out: Path, pairs, padding_side: str = "right") -> tuple[np.ndarray, torch.Tensor]:
    """sigmoid of the exported model's logits on padded, batched prompts rendered with its own template."""
    model = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    assert type(model) is Qwen3ForSequenceClassification
    tokenizer = AutoTokenizer.from_pretrained(out, padding_side=padding_side)
    prompts = [
        tokenizer.apply_chat_template([{"role": "query", "content": q}, {"role": "document", "content": d}],
                                      tokenize=False)
        for q, d in pairs
    ]
    batch = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**batch).logits
    assert logits.shape == (len(pairs), 1)
    return torch.sigmoid(logits[:, 0]).numpy(), batch["attention_mask"]


def test_export_is_a_plain_qwen3_classifier(tiny_vllm_export, tiny_model_dir):
    out, report = tiny_vllm_export
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["architectures"] == ["Qwen3ForSequenceClassification"]
    assert len(config["id2label"]) == 1 and config["pad_token_id"] == 151643
    assert not {"auto_map", "yes_token_id", "score_temperature", "score_bias", "max_query_tokens"} & set(config)
    assert not [name for name in ST_FILES if (out / name).exists()]
    assert (out / "chat_template.jinja").read_text() == CHAT_TEMPLATE_FILE.read_text()
    assert "--chat-template" in (out / "README.md").read_text()

    source = load_file(tiny_model_dir / "model.safetensors")
    with safe_open(out / "model.safetensors", framework="pt") as f:
        assert set(f.keys()) == set(source)
        score = f.get_tensor("score.weight")
        assert score.dtype == torch.float32
        torch.testing.assert_close(score, source["score.weight"].float() / 5.0, rtol=0, atol=0)
        torch.testing.assert_close(f.get_tensor("model.norm.weight"), source["model.norm.weight"], rtol=0, atol=0)
    assert report["max_abs_score_error"] <= 1e-5 and report["dropped_score_bias"] is None


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_padded_batches_score_like_zerank(tiny_vllm_export, tiny_cross_encoder, padding_side):
    out, _ = tiny_vllm_export
    scores, mask = exported_scores(out, PAIRS, padding_side)
    assert (mask == 0).any()  # the batch really is padded
    expected = tiny_cross_encoder.predict(PAIRS)
    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)
    assert not np.allclose(scores, 0.5, atol=1e-3)  # not a degenerate head


@pytest.fixture(scope="module")
def calibrated_sharded_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny zerank folder with score_bias=1.5, score_temperature=2.5, and weights in two shards."""
    folder = tmp_path_factory.mktemp("calibrated") / "model"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    config.update(score_bias=1.5, score_temperature=2.5)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tensors = load_file(tiny_model_dir / "model.safetensors")
    first = {k: v for k, v in tensors.items() if k.startswith("model.embed_tokens")}
    second = {k: v for k, v in tensors.items() if k not in first}
    save_file(first, folder / "model-00001-of-00002.safetensors", metadata={"format": "pt"})
    save_file(second, folder / "model-00002-of-00002.safetensors", metadata={"format": "pt"})
    weight_map = {k: "model-00001-of-00002.safetensors" for k in first} | {
        k: "model-00002-of-00002.safetensors" for k in second}
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
             "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def test_non_zero_bias_is_refused_without_drop_bias(calibrated_sharded_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="--drop-bias"):
        export(ExportArguments(model=str(calibrated_sharded_dir), out=tmp_path / "refused", verify=False))
    assert not (tmp_path / "refused").exists()
    with pytest.raises(SystemExit, match="score_bias=1.5"):
        cli.main(["export", "--model", str(calibrated_sharded_dir), "--out", str(tmp_path / "refused")])


def test_drop_bias_exports_a_sharded_model_without_the_bias(calibrated_sharded_dir, tmp_path):
    out = tmp_path / "export"
    report = export(ExportArguments(model=str(calibrated_sharded_dir), out=out, drop_bias=True))
    assert report["dropped_score_bias"] == 1.5 and report["max_abs_score_error"] <= 1e-5
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == json.loads((calibrated_sharded_dir / "model.safetensors.index.json").read_text())[
        "weight_map"]
    assert (out / "model-00001-of-00002.safetensors").read_bytes() == (
        calibrated_sharded_dir / "model-00001-of-00002.safetensors").read_bytes()  # copied, not rewritten
    assert "--drop-bias" in (out / "README.md").read_text()

    source = CrossEncoder(str(calibrated_sharded_dir), trust_remote_code=True, device="cpu")
    logits = source.predict(PAIRS, activation_fn=torch.nn.Identity())
    scores, _ = exported_scores(out, PAIRS)
    np.testing.assert_allclose(scores, torch.sigmoid(torch.from_numpy(logits) + 1.5 / 2.5).numpy(), atol=1e-5, rtol=0)
    assert not np.allclose(scores, source.predict(PAIRS), atol=1e-3)  # the bias really is gone


def test_refuses_a_folder_that_is_not_zerank(tiny_base_dir, tmp_path):
    with pytest.raises(ValueError, match="not a zerank model"):
        export(ExportArguments(model=str(tiny_base_dir), out=tmp_path / "x", verify=False))
    with pytest.raises(FileNotFoundError, match="neither a folder nor a hub id"):
        export(ExportArguments(model=str(tmp_path / "missing"), out=tmp_path / "y", verify=False))


# ONNX and OpenVINO: the scoring graph, scored by zerank.load_reranker (zerank.model.runtimes).

LONG_PAIR = ("What does the reranker read? " * 3, " ".join(f"Paragraph {i} of a long document." for i in range(60)))


@pytest.fixture(scope="module")
def onnx_export(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx-export") / "model"
    return out, export(ExportArguments(model=str(tiny_model_dir), out=out, format="onnx"))


def test_onnx_export_scores_like_zerank(onnx_export, tiny_cross_encoder):
    import zerank
    from zerank.model.runtimes import RuntimeReranker

    out, report = onnx_export
    assert report["max_abs_score_error"] <= 1e-4 and report["format"] == "onnx"
    assert {"model.onnx", "zerank_runtime.json", "chat_template.jinja", "tokenizer.json", "README.md"} <= {
        p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.suffix in (".safetensors", ".py")]  # no torch weights, no zerank code
    model = zerank.load_reranker(str(out))
    assert isinstance(model, RuntimeReranker)
    pairs = [*PAIRS, LONG_PAIR]
    np.testing.assert_allclose(model.predict(pairs, batch_size=2), tiny_cross_encoder.predict(pairs), atol=1e-4, rtol=0)
    assert model.predict([]).shape == (0,)
    ranked = model.rank(PAIRS[0][0], [d for _, d in PAIRS[:2]])
    assert sorted(r["corpus_id"] for r in ranked) == [0, 1] and ranked[0]["score"] >= ranked[1]["score"]
    with pytest.raises(TypeError, match="the document must be a string"):
        model.predict([("query", None)])
    with pytest.raises(ValueError, match="exported runtime folder"):
        zerank.load_reranker(str(out), dtype="bfloat16")


def test_runtime_prompt_ids_equal_crossencoder_ids(onnx_export, tiny_model_dir):
    """Rendering, the query cap and truncation with the template suffix restored: token for token CrossEncoder's."""
    from sentence_transformers import CrossEncoder

    from zerank.model.runtimes import RuntimeReranker

    out, _ = onnx_export
    encoder = CrossEncoder(str(tiny_model_dir), trust_remote_code=True, device="cpu", max_length=48)
    runtime = RuntimeReranker(out, max_length=48)
    pairs = [*PAIRS, LONG_PAIR, ("q " * 40, "a short document")]
    features = encoder.preprocess(pairs)
    for i, pair in enumerate(pairs):
        row = features["input_ids"][i][features["attention_mask"][i].bool()].tolist()
        assert runtime.encoder.encode(*pair) == row, pair
    assert len(runtime.encoder.encode(*LONG_PAIR)) == 48


def test_openvino_export_scores_like_zerank(tiny_model_dir, tiny_cross_encoder, tmp_path):
    import zerank

    out = tmp_path / "openvino"
    report = export(ExportArguments(model=str(tiny_model_dir), out=out, format="openvino"))
    assert report["max_abs_score_error"] <= 1e-4 and (out / "openvino_model.xml").exists()
    pairs = [*PAIRS, LONG_PAIR]
    np.testing.assert_allclose(zerank.load_reranker(str(out)).predict(pairs), tiny_cross_encoder.predict(pairs),
                               atol=1e-4, rtol=0)


def test_failed_parity_check_leaves_the_previous_export(onnx_export, tiny_model_dir, tmp_path, monkeypatch):
    import zerank.export.exporter as export_module

    out = tmp_path / "onnx"
    shutil.copytree(onnx_export[0], out)
    before = sorted((p.name, p.stat().st_size) for p in out.iterdir())
    monkeypatch.setattr(export_module, "MAX_RUNTIME_SCORE_ERROR", -1.0)
    with pytest.raises(RuntimeError, match="disagrees with zerank"):
        export(ExportArguments(model=str(tiny_model_dir), out=out, format="onnx", overwrite=True))
    assert sorted((p.name, p.stat().st_size) for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]  # no staging folder left behind
    with pytest.raises(ValueError, match="--quantize applies to --format onnx"):
        export(ExportArguments(model=str(tiny_model_dir), out=tmp_path / "v", format="vllm", quantize="int8"))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_int8_export_stays_close(fmt, tiny_model_dir, tiny_cross_encoder, tmp_path):
    import zerank

    out = tmp_path / fmt
    report = export(ExportArguments(model=str(tiny_model_dir), out=out, format=fmt, quantize="int8"))
    assert report["quantize"] == "int8" and report["max_abs_score_error"] <= 0.05
    scores = zerank.load_reranker(str(out)).predict(PAIRS)
    assert np.abs(scores - tiny_cross_encoder.predict(PAIRS)).max() <= 0.05
