"""zerank: an open, self-hostable LLM reranker (a Qwen3 decoder scored by its calibrated "Yes" logit).

The model itself is the remote code next to the weights (``modeling_zerank.py``, ``zerank_st.py``), loaded with
``CrossEncoder(path, trust_remote_code=True)``. This package is the tooling around it, one subpackage per feature,
in the layers of :data:`LAYERS` (a subpackage imports only from its own layer or below, and subpackages of one layer
never import each other in a cycle; ``tests/test_layers.py`` checks it). Importing ``zerank`` imports nothing heavy.
"""

__version__ = "0.2.0"

# The library's layers, lowest first: subpackage -> what it holds.
LAYERS: tuple[dict[str, str], ...] = (
    {"utils": "every command's shared argument groups, packaged files, atomic files and staged output folders"},
    {"data": "BEIR folders, jsonl pairs, TREC runs"},
    {"model": "loading any reranker, scoring and calibration, what a package folder holds, exported runtimes"},
    {"evaluation": "the BM25 first stage, trec_eval metrics, zerank evaluate and calibrate",
     "packaging": "zerank build, publish and demo",
     "export": "zerank export (vLLM, ONNX, OpenVINO)"},
    {"training": "zerank finetune and the zELO pipeline (pairs, judge, elo)",
     "serving": "zerank serve: the rerank APIs and the ZeroEntropy search API",
     "rerank": "zerank rerank: resumable sharded batch reranking",
     "bench": "zerank bench and bench-serve"},
    {"cli": "the zerank command"},
)


def __getattr__(name: str):
    # `zerank.load_reranker` without importing torch when `zerank` itself is imported.
    if name == "load_reranker":
        from zerank.model.loading import load_reranker

        return load_reranker
    raise AttributeError(f"module 'zerank' has no attribute {name!r}")
