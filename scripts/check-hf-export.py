"""Loads a `taper export --format hf` directory with Hugging Face transformers and compares its
predictions with taper's own (`taper predict` JSON lines) on the same inputs:
- ...ForSequenceClassification (AutoModelForSequenceClassification: BERT, RoBERTa, XLM-R): every
  label's probability;
- ...ForTokenClassification (AutoModelForTokenClassification): each word's tag (the argmax at
  its first sub-word, words given pre-split) and that tag's probability.
Usage: python check-hf-export.py EXPORT_DIR PREDICTIONS.jsonl MAX_LEN
Exits 1 when any probability differs by more than 1e-3, or a tag differs."""
import json
import sys

import torch
import transformers
from transformers import AutoConfig, PreTrainedTokenizerFast

export, predictions, max_len = sys.argv[1], sys.argv[2], int(sys.argv[3])
architecture = AutoConfig.from_pretrained(export).architectures[0]
tokenizer = PreTrainedTokenizerFast(tokenizer_file=f"{export}/tokenizer.json")
tokenizer.pad_token = next(t for t in ["[PAD]", "<pad>"] if t in tokenizer.get_vocab())
records = [json.loads(line) for line in open(predictions, encoding="utf-8")]
worst, tag_mismatches = 0.0, 0
if architecture.endswith("ForTokenClassification"):
    model = transformers.AutoModelForTokenClassification.from_pretrained(export).eval()
    for start in range(0, len(records), 32):
        chunk = records[start : start + 32]
        batch = tokenizer([r["tokens"] for r in chunk], is_split_into_words=True, padding=True,
                          truncation=True, max_length=max_len, return_tensors="pt")
        with torch.no_grad():
            probs = model(**batch).logits.softmax(-1)
        for b, record in enumerate(chunk):
            seen = set()
            for t, word in enumerate(batch.word_ids(b)):
                if word is None or word in seen:
                    continue
                seen.add(word)
                best = int(probs[b, t].argmax())
                tag_mismatches += model.config.id2label[best] != record["tags"][word]
                worst = max(worst, abs(float(probs[b, t, best]) - record["confidence"][word]))
else:
    model = transformers.AutoModelForSequenceClassification.from_pretrained(export).eval()
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
print(f"transformers {transformers.__version__}, {architecture}: {len(records)} inputs, "
      f"max |p_transformers - p_taper| = {worst:.2e}, {tag_mismatches} tags differ")
sys.exit(0 if worst <= 1e-3 and tag_mismatches == 0 else 1)
