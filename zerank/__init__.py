"""zerank: an open, self-hostable LLM reranker (a Qwen3 decoder scored by its calibrated "Yes" logit).

The model itself is the remote code next to the weights (``modeling_zerank.py``, ``zerank_st.py``), loaded with
``CrossEncoder(path, trust_remote_code=True)``. This package is the tooling around it, one module per concern:

- lower layer: ``arguments`` (every command's arguments), ``resources`` (packaged files), ``system`` (logging,
  memory, versions, atomic files), ``data`` (BEIR folders, jsonl pairs, TREC runs), ``metrics`` (trec_eval);
- model layer: ``loading`` (device, dtype, loading), ``scoring`` (batching, raw <-> calibrated), ``retrieval``
  (the BM25 first stage), ``package`` (what a zerank folder holds, the model card);
- tasks: ``convert`` (build), ``export``, ``evaluation``, ``calibration``, ``training``, ``publish``, ``server``,
  ``benchmark``, ``bench_serve``, ``demo``;
- ``cli``: the ``zerank`` command.

A module imports only from its own layer or below. Importing ``zerank`` imports nothing heavy.
"""

__version__ = "0.2.0"
