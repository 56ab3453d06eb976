"""Loads a `taper export --format hf` directory with Hugging Face transformers
(AutoModelForSequenceClassification + the exported tokenizer.json) and compares its label
probabilities with taper's own predictions (`taper predict` JSON lines) on the same inputs.
Usage: python check-hf-export.py EXPORT_DIR PREDICTIONS.jsonl MAX_LEN
Exits 1 when any probability differs by more than 1e-3."""
import json
import sys

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast

export, predictions, max_len = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = AutoModelForSequenceClassification.from_pretrained(export).eval()
tokenizer = PreTrainedTokenizerFast(tokenizer_file=f"{export}/tokenizer.json", pad_token="[PAD]")
records = [json.loads(line) for line in open(predictions, encoding="utf-8")]
worst = 0.0
for start in range(0, len(records), 32):
    chunk = records[start : start + 32]
    pairs = [r.get("text_pair") for r in chunk]
    batch = tokenizer(
        [r["text"] for r in chunk],
        pairs if any(p is not None for p in pairs) else None,
        padding=True,
        truncation=True,
        max_length=max_len,
        return_tensors="pt",
    )
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1)
    for record, row in zip(chunk, probs):
        for i, p in enumerate(row.tolist()):
            label = model.config.id2label[i]
            worst = max(worst, abs(p - record["probabilities"][label]))
print(f"transformers {__import__('transformers').__version__}: {len(records)} inputs, "
      f"max |p_transformers - p_taper| = {worst:.2e}")
sys.exit(0 if worst <= 1e-3 else 1)
