"""Score pairs with plain transformers (any version): ``tokenizer(query, document)`` and the model's one logit.

Run in another environment (transformers 4.x here): ``python score_pairs_transformers.py MODEL PAIRS.json``;
prints a JSON list of sigmoid(logit), in input order. Pairs are scored one by one (no padding).
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

model_dir, pairs_file = sys.argv[1], sys.argv[2]
pairs = json.loads(Path(pairs_file).read_text(encoding="utf-8"))
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
scores = []
with torch.no_grad():
    for query, document in pairs:
        batch = tokenizer(query, document, return_tensors="pt")
        scores.append(torch.sigmoid(model(**batch).logits.float()).item())
print(json.dumps(scores))
