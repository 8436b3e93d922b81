"""zerank: an open, self-hostable LLM reranker (a Qwen3 decoder scored by its calibrated "Yes" logit).

The model itself is the remote code next to the weights (``modeling_zerank.py``, ``zerank_st.py``), loaded with
``CrossEncoder(path, trust_remote_code=True)``. This package is the tooling around it, one module per concern:

1. ``arguments`` (every command's arguments; standard library only), ``resources`` (packaged files), ``system``
   (peak memory, versions, atomic files, staged output folders);
2. ``data`` (BEIR folders, jsonl pairs, TREC runs), ``metrics`` (trec_eval), ``zelo`` (pairwise judgments and Elo
   fits), ``store`` (the search store: SQLite FTS5 behind an interface);
3. ``loading`` (device, dtype, loading any reranker folder), ``scoring`` (batching, raw <-> calibrated),
   ``retrieval`` (the BM25 first stage), ``package`` (what a zerank folder holds, the model card), ``runtimes``
   (scoring exported ONNX Runtime / OpenVINO folders);
4. tasks: ``convert`` (build), ``export``, ``evaluation``, ``calibration``, ``training``, ``zelo_tasks`` (pairs,
   judge, elo), ``rerank``, ``publish``, ``server`` and ``search_api``, ``benchmark``, ``bench_serve``, ``demo``;
5. ``cli``: the ``zerank`` command.

A module imports only from its own layer or below (``tests/test_layers.py`` checks it). Importing ``zerank``
imports nothing heavy.
"""

__version__ = "0.2.0"


def __getattr__(name: str):
    # `zerank.load_reranker` without importing torch when `zerank` itself is imported.
    if name == "load_reranker":
        from zerank.loading import load_reranker

        return load_reranker
    raise AttributeError(f"module 'zerank' has no attribute {name!r}")
