"""zerank finetune (zerank.training): learning a synthetic task, the saved package, resume, LoRA/merge, data formats,
the trainer flags parsed in one pass with the command's own."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, shared_dir
from evaluate_data import write_synthetic_beir
from transformers import HfArgumentParser

from zerank.cli import main as cli_main
from zerank.model.package import PACKAGE_FILES
from zerank.training import examples, losses
from zerank.training import trainer as training
from zerank.training.arguments import FinetuneArguments
from zerank.training.training_args import ZerankTrainingArguments, resume_target
from zerank.utils.arguments import FirstStageArguments

# A random tiny model learns the synthetic task (the relevant documents repeat a rare word) in a few dozen steps with
# a high learning rate (measured on three data/training seeds: pairwise loss, 16 steps: held-out NDCG@10 +0.30 to
# +0.37; bce, 40 steps: +0.23 to +0.31); the embeddings stay frozen to keep a CPU step cheap (151,936 rows).
FAST = ["--bm25-stemmer", "none", "--use-cpu", "--warmup-steps", "0", "--negatives-per-query", "4",
        "--eval-top-k", "10", "--logging-steps", "4"]

SCORE_IN_FRESH_PROCESS = """
import json, sys, torch
from sentence_transformers import CrossEncoder
model = CrossEncoder(sys.argv[1], trust_remote_code=True, device="cpu")
pairs = [tuple(p) for p in json.loads(open(sys.argv[2]).read())["pairs"]]
print(json.dumps(model.predict(pairs, activation_fn=torch.nn.Identity()).tolist()))
"""


def parse(argv: list[str]) -> tuple:
    """``zerank finetune ARGV``'s dataclasses, parsed in one pass as the command line does."""
    parser = HfArgumentParser((FinetuneArguments, FirstStageArguments, ZerankTrainingArguments))
    return parser.parse_args_into_dataclasses(list(argv), look_for_args_file=False)


def main(argv: list[str]):
    """``zerank finetune ARGV`` in this process (so a test can patch zerank.training.trainer); returns its report."""
    return training.main(*parse(argv))


def fresh_process_logits(folder, probe_file) -> np.ndarray:
    done = subprocess.run([sys.executable, "-c", SCORE_IN_FRESH_PROCESS, str(folder), str(probe_file)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.array(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_beir(tmp_path_factory.mktemp("ft-data") / "beir", n_queries=60,
                                splits={"train": 0.8, "test": 0.2})


@pytest.fixture(scope="module")
def finetuned(synthetic, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "run"
    report = main(["--model", str(tiny_model_dir), "--data", str(synthetic), "--output-dir", str(out),
                   "--loss", "ranknet", "--max-steps", "16", "--learning-rate", "3e-3",
                   "--per-device-train-batch-size", "4",
                   "--freeze-embeddings", "--eval-steps", "16", *FAST])
    return report, out


def test_finetuning_learns_the_synthetic_task(finetuned):
    report, out = finetuned
    before, after = report["before"]["ndcg@10"], report["after"]["ndcg@10"]
    print(f"held-out NDCG@10 {before:.3f} -> {after:.3f}; training {report['training']['runtime_s']:.1f}s, "
          f"{report['memory']}")
    assert after >= before + 0.2
    saved = json.loads((out / "report.json").read_text())
    assert saved["after"] == pytest.approx(report["after"]) and saved["training"]["steps"] == 16
    losses = [entry["loss"] for entry in saved["training"]["log_history"] if "loss" in entry]
    assert losses[-1] < losses[0]
    assert any("eval_heldout_ndcg@10" in entry for entry in saved["training"]["log_history"])  # the evaluator ran
    args = json.loads((out / "args.json").read_text())
    assert args["args"]["learning_rate"] == 3e-3 and "sentence-transformers" in args["versions"]


def test_final_folder_is_a_complete_package_that_scores_as_trained_in_a_fresh_process(finetuned):
    report, out = finetuned
    final = out / "final"
    for name in PACKAGE_FILES:
        assert (final / name).exists(), name
    assert list(final.glob("*.safetensors"))
    config = json.loads((final / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSequenceClassification"] == "modeling_zerank.ZerankForSequenceClassification"
    assert config["score_temperature"] == pytest.approx(report["calibration"]["temperature"])
    assert config["score_bias"] == pytest.approx(report["calibration"]["bias"])
    card = (final / "README.md").read_text()
    assert "## Training" in card and f"{report['after']['ndcg@10']:.4f}" in card
    assert "with `zerank finetune`" in card
    assert f"{report['calibration']['temperature']:.4g}" in card
    probe = json.loads((out / "probe.json").read_text())
    np.testing.assert_allclose(fresh_process_logits(final, out / "probe.json"), probe["logits"], atol=1e-5)
    assert report["reload_max_abs_diff"] <= 1e-5


def test_recalibration_improves_the_held_out_log_loss(finetuned):
    report, _ = finetuned
    calibration = report["calibration"]
    assert calibration["fit_log_loss"]["after"] <= calibration["fit_log_loss"]["before"] + 1e-12
    assert calibration["after"]["log_loss"] < calibration["before"]["log_loss"]


@pytest.mark.slow  # two training runs (about a minute on a busy 2-core machine)
def test_resuming_from_a_checkpoint_finishes_the_same_run(synthetic, tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["--model", str(tiny_model_dir), "--data", str(synthetic), "--output-dir", str(out), "--max-steps", "6",
            "--save-steps", "2", "--save-total-limit", "5", "--eval-steps", "100", "--learning-rate", "3e-3",
            "--freeze-embeddings", "--eval-max-queries", "4", *FAST]
    main(args)
    uninterrupted = json.loads((out / "probe.json").read_text())["logits"]
    shutil.rmtree(out / "checkpoints" / "checkpoint-6")  # as if the run had stopped after step 4

    steps_run = []

    class Counting(training.CrossEncoderTrainer):
        def training_step(self, *args, **kwargs):
            steps_run.append(self.state.global_step)
            return super().training_step(*args, **kwargs)

    monkeypatch.setattr(training, "CrossEncoderTrainer", Counting)
    resumed = main([*args, "--resume-from-checkpoint", "latest"])
    assert steps_run == [4, 5] and resumed["training"]["steps"] == 6
    np.testing.assert_allclose(json.loads((out / "probe.json").read_text())["logits"], uninterrupted, atol=1e-5)


@pytest.mark.slow  # a build, a training run and three fresh processes
def test_lora_from_a_qwen3_causal_lm_saves_an_adapter_and_a_merged_package(tiny_base_dir, tokenizer_dir, synthetic,
                                                                           tiny_model_dir, tmp_path):
    out = tmp_path / "lora"
    report = main(["--model", str(tiny_base_dir), "--tokenizer", str(tokenizer_dir), "--data", str(synthetic),
                   "--output-dir", str(out), "--max-steps", "4", "--learning-rate", "1e-2", "--lora", "--lora-r", "4",
                   "--lora-alpha", "8", "--merge", "--eval-max-queries", "4", "--eval-steps", "100", *FAST])
    assert json.loads((out / "base" / "config.json").read_text())["model_type"] == "zerank"  # built first
    assert (out / "adapter" / "adapter_config.json").exists() and not (out / "final" / "adapter_config.json").exists()
    for name in PACKAGE_FILES:
        assert (out / "final" / name).exists(), name
    probe_file = out / "probe.json"
    merged = fresh_process_logits(out / "final", probe_file)
    np.testing.assert_allclose(merged, json.loads(probe_file.read_text())["logits"], atol=1e-5)
    adapter = fresh_process_logits(out / "adapter", probe_file)  # loads out/base, then the adapter
    base = fresh_process_logits(out / "base", probe_file)
    calibration = report["calibration"]
    # Same raw logits: the adapter keeps the base calibration (T=5, b=0), the merged package the refitted one.
    np.testing.assert_allclose(adapter * 5.0, merged * calibration["temperature"] + calibration["bias"], atol=1e-4)
    assert np.abs(adapter - base).max() > 1e-4  # the adapter changed the model


def oracle_elo(data, out) -> tuple:
    """zerank pairs on the synthetic folder's train split, judged by a soft oracle (p = sigmoid(2 (grade_a -
    grade_b)) of the qrels grades, unjudged = 0, across queries too), then zerank elo: (elo.jsonl, its report)."""
    from scipy.special import expit

    cli_main(["pairs", "--data", str(data), "--split", "train", "--top-k", "10", "--cycles", "4",
              "--bm25-stemmer", "none", "--out", str(out / "pairs")])
    grades: dict = {}
    for line in (data / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        qid, doc_id, grade = line.split("\t")
        grades.setdefault(qid, {})[doc_id] = int(grade)
    rows = []
    for line in (out / "pairs" / "pairs.jsonl").read_text().splitlines():
        pair = json.loads(line)
        qb = pair.get("query_id_b", pair["query_id"])
        delta = grades[pair["query_id"]].get(pair["doc_a"], 0) - grades[qb].get(pair["doc_b"], 0)
        rows.append({k: pair[k] for k in ("query_id", "doc_a", "doc_b", "query_id_b") if k in pair}
                    | {"p_a_wins": float(expit(2.0 * delta))})
    (out / "judgments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = cli_main(["elo", "--judgments", str(out / "judgments.jsonl"), "--out", str(out / "elo")])
    return out / "elo" / "elo.jsonl", report


@pytest.mark.slow  # a full training run (76 s on a 2-core machine shared with other jobs)
def test_elo_targets_from_pairwise_judgments_teach_the_synthetic_task(synthetic, tiny_model_dir, tmp_path):
    # zELO end to end with a soft oracle judge: pairs -> judgments -> Elo -> --loss elo-mse. Measured: held-out
    # NDCG@10 0.564 -> 0.860 in 24 steps (training 31 s on a 2-core machine shared with other jobs).
    elo, elo_report = oracle_elo(synthetic, tmp_path)
    assert elo_report["queries"] == 48 and not elo_report["not_converged_queries"]
    out = tmp_path / "ft"
    report = main(["--model", str(tiny_model_dir), "--data", str(synthetic), "--output-dir", str(out),
                   "--loss", "elo-mse", "--elo", str(elo), "--max-steps", "24", "--learning-rate", "3e-3",
                   "--per-device-train-batch-size", "16", "--freeze-embeddings", "--eval-steps", "24", *FAST])
    before, after = report["before"]["ndcg@10"], report["after"]["ndcg@10"]
    print(f"elo-mse: held-out NDCG@10 {before:.3f} -> {after:.3f}; training {report['training']['runtime_s']:.1f}s")
    assert after >= before + 0.2
    assert report["data"]["train_queries"] == 48 and report["data"]["train_examples"] == 480
    assert report["data"]["targets"].startswith("sigmoid(Elo)")
    assert (out / "final" / "config.json").exists() and report["calibration_applied"]
    assert "sigmoid(Elo)" in (out / "final" / "README.md").read_text()


def test_elo_mse_loss_regresses_sigmoid_of_the_score_on_its_elo_targets(tiny_cross_encoder):
    import torch

    from zerank.model.scoring import score_pairs

    documents, targets = ["zorvex notes zorvex", "general filler text"], [0.8, 0.1]
    loss = losses.make_loss("elo-mse", tiny_cross_encoder, None)
    with torch.no_grad():
        value = loss([["what is zorvex"] * 2, documents], torch.tensor(targets))
    logits = score_pairs(tiny_cross_encoder, [("what is zorvex", d) for d in documents], output="logit")
    expected = np.mean((1 / (1 + np.exp(-logits.astype(np.float64))) - targets) ** 2)
    assert float(value) == pytest.approx(expected, rel=1e-4)


def test_elo_data_trains_on_the_elo_queries_that_are_not_held_out(synthetic, tmp_path):
    from zerank.evaluation.first_stage import BM25Settings, FirstStage

    elo = tmp_path / "elo.jsonl"
    rows = [("q0", "d0-pos0", 2.0), ("q0", "d0-neg1", -1.0), ("q0", "nowhere", 0.0), ("q1", "d1-pos1", 0.5),
            ("q55", "d55-pos0", 1.0), ("unknown", "d0-pos0", 1.0)]  # q55 is judged in the test split
    elo.write_text("".join(json.dumps({"query_id": q, "doc_id": d, "elo": e}) + "\n" for q, d, e in rows))
    args = FinetuneArguments(model="unused", data=synthetic, loss="elo-mse", elo=elo, eval_top_k=5)
    groups, heldout = examples.elo_data(args, FirstStage(bm25=BM25Settings(stemmer="none")), 0)
    assert "q55" in heldout.qrels and len(heldout.qrels) == 12
    assert [len(g.documents) for g in groups] == [2, 1]
    np.testing.assert_allclose(groups[0].grades, 1 / (1 + np.exp(-np.array([2.0, -1.0]))))


def test_elo_mse_needs_its_elo_file(synthetic, tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="--loss elo-mse and --elo go together"):
        main(["--model", str(tiny_model_dir), "--data", str(synthetic), "--output-dir", str(tmp_path),
              "--loss", "elo-mse"])
    elo = tmp_path / "elo.jsonl"
    elo.write_text(json.dumps({"query_id": "q0", "doc_id": "d0-pos0", "elo": 1.0}) + "\n")
    with pytest.raises(ValueError, match="--loss elo-mse and --elo go together"):
        main(["--model", str(tiny_model_dir), "--data", str(synthetic), "--output-dir", str(tmp_path),
              "--elo", str(elo)])
    assert losses.training_dataset([examples.Group("q", ["a", "b"], [0.7, 0.2])], "elo-mse", 1).to_dict() == \
        {"query": ["q", "q"], "document": ["a", "b"], "label": [0.7, 0.2]}


def test_jsonl_data_with_a_listwise_loss(tiny_model_dir, tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        word = f"zz{i}qx"
        rows.append({"query": f"about {word}", "positive": f"{word} {word} is here",
                     "negatives": [f"filler text {rng.integers(1000)}" for _ in range(3)]})
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = main(["--model", str(tiny_model_dir), "--data", str(data), "--output-dir", str(tmp_path / "out"),
                   "--loss", "lambda", "--per-device-train-batch-size", "2", "--max-steps", "2",
                   "--holdout-fraction", "0.25",
                   "--eval-steps", "100", "--gradient-checkpointing", *FAST])
    assert report["data"]["train_queries"] == 9 and report["data"]["heldout_queries"] == 3
    assert set(report["after"]) == {"ndcg@10", "mrr@10", "recall@10", "recall@100"}
    assert (tmp_path / "out" / "final" / "config.json").exists()


def test_bad_arguments_name_the_problem(tiny_model_dir, synthetic, tmp_path):
    with pytest.raises(ValueError, match="--merge needs --lora"):
        main(["--model", str(tiny_model_dir), "--data", str(synthetic), "--output-dir", str(tmp_path), "--merge"])
    with pytest.raises(ValueError, match="missing does not exist"):
        main(["--model", str(tiny_model_dir), "--data", str(tmp_path / "missing"), "--output-dir", str(tmp_path)])
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ValueError, match="neither a zerank model nor a Qwen3ForCausalLM"):
        main(["--model", str(other), "--data", str(synthetic), "--output-dir", str(tmp_path / "out"), *FAST])


@pytest.mark.slow
def test_short_run_on_scifact_writes_its_report(tiny_model_dir, tmp_path):
    data = shared_dir() / "data" / "ir" / "scifact"
    if not data.exists():
        pytest.skip(f"{data} not available")
    out = tmp_path / "scifact"
    report = main(["--model", str(tiny_model_dir), "--data", str(data), "--output-dir", str(out), "--max-steps", "8",
                   "--per-device-train-batch-size", "8", "--max-train-queries", "64", "--eval-max-queries", "20",
                   "--eval-top-k", "20",
                   "--max-length", "256", "--learning-rate", "1e-3", "--use-cpu", "--eval-steps", "4"])
    saved = json.loads((out / "report.json").read_text())
    print(json.dumps({k: saved[k] for k in ("first_stage", "before", "after")}), saved["training"]["runtime_s"])
    assert saved["data"]["train_queries"] > 0 and saved["data"]["heldout_queries"] == 20
    assert (out / "final" / "README.md").exists() and report["reload_max_abs_diff"] <= 1e-4


def test_trainer_flags_take_the_command_defaults_and_run_four_evaluations(tmp_path):
    run = ["--model", "unused", "--data", str(tmp_path), "--output-dir", str(tmp_path)]
    _, _, flags = parse([*run, "--max-steps", "40", "--seed", "3", "--use-cpu"])
    assert flags.learning_rate == 2e-5 and flags.per_device_train_batch_size == 16
    assert flags.num_train_epochs == 1.0 and flags.bf16 is False  # --use-cpu: no bf16
    args = flags.trainer_arguments(total_steps=40, has_evaluator=True)
    assert args.output_dir == str(tmp_path / "checkpoints") and args.max_steps == 40
    assert args.eval_strategy == "steps" and args.eval_steps == 10 and args.save_steps == 10
    assert args.seed == 3 and args.data_seed == 3 and args.warmup_steps == 0.1
    _, _, given = parse([*run, "--eval-steps", "5", "--gradient-checkpointing", "--data-seed", "7"])
    args = given.trainer_arguments(total_steps=40, has_evaluator=False)
    assert args.eval_strategy == "no" and args.eval_steps == 5 and args.save_steps == 5 and args.data_seed == 7
    assert args.activation_checkpointing and args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert resume_target("latest") is True and resume_target("run/checkpoint-4") == "run/checkpoint-4"


def test_graded_jsonl_rows_keep_their_grades(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"query": "a", "document": "x", "label": 2}) + "\n"
                    + json.dumps({"query": "b", "positive": "p", "negatives": ["n1", "n2"]}) + "\n")
    assert examples.jsonl_graded_pairs(data, 1) == [("a", "x", 2.0), ("b", "p", 1.0), ("b", "n1", 0.0),
                                                    ("b", "n2", 0.0)]
    data.write_text(json.dumps({"query": "a", "text": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"rows.jsonl:1: expected \{query, document, label\}"):
        examples.jsonl_graded_pairs(data, 1)


def test_unknown_trainer_flags_are_usage_errors_and_the_help_lists_the_trainer_flags(tiny_model_dir, synthetic,
                                                                                       tmp_path):
    command = ["--model", str(tiny_model_dir), "--data", str(synthetic), "--output-dir", str(tmp_path / "out")]
    unused = r"not used by the HfArgumentParser: \['--batch-size', '4', '--no-such-flag'\]"
    with pytest.raises(ValueError, match=unused):
        main([*command, "--batch-size", "4", "--no-such-flag"])
    assert not (tmp_path / "out").exists()  # refused before any work
    help_text = HfArgumentParser((FinetuneArguments, FirstStageArguments, ZerankTrainingArguments)).format_help()
    assert "--per-device-train-batch-size" in help_text and "--resume-from-checkpoint" in help_text
    assert "--negatives-per-query" in help_text and "--bm25-stemmer" in help_text
