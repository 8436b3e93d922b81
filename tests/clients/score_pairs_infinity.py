"""Score pairs with Infinity (``infinity-emb``, its own environment: it pins transformers < 5).

``python score_pairs_infinity.py MODEL PAIRS.json``: prints a JSON list of Infinity's rerank scores (its default
activation, a sigmoid), in input order, each query's documents sent in one request.
"""

import asyncio
import json
import sys
from pathlib import Path

from infinity_emb import AsyncEngineArray, EngineArgs


async def main(model_dir: str, pairs: list[list[str]]) -> list[float]:
    args = EngineArgs(model_name_or_path=model_dir, engine="torch", device="cpu", dtype="float32",
                      bettertransformer=False, model_warmup=False)
    engine = AsyncEngineArray.from_args([args])[0]
    scores = [0.0] * len(pairs)
    async with engine:
        for query in dict.fromkeys(q for q, _ in pairs):
            indices = [i for i, (q, _) in enumerate(pairs) if q == query]
            results, _ = await engine.rerank(query=query, docs=[pairs[i][1] for i in indices], raw_scores=False)
            for result in results:
                scores[indices[result.index]] = float(result.relevance_score)
    return scores


model_dir, pairs_file = sys.argv[1], sys.argv[2]
print(json.dumps(asyncio.run(main(model_dir, json.loads(Path(pairs_file).read_text(encoding="utf-8"))))))
