"""The transformers + PyTorch side of scripts/bench-finetune.sh: fine-tunes a Hugging Face
sequence classifier (AutoModelForSequenceClassification) on a CSV of text,label rows as taper's
`sequence-classification` task does (random batches of BATCH rows, padded to the longest,
truncated to MAX_LEN; AdamW with weight decay 0.01, gradient clipping at 1.0, linear warmup then
linear decay; dropout as the checkpoint says), then scores the validation CSV. Prints one JSON
line: ms_per_step (the whole loop: batching, forward, backward, clipping, the optimizer step),
samples_per_s, peak_rss_mb (ru_maxrss) and val_accuracy.
Usage: python bench-finetune.py MODEL_DIR TRAIN_CSV VAL_CSV STEPS BATCH MAX_LEN LR WARMUP THREADS"""
import csv
import json
import random
import resource
import sys
import time

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast


def rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return [(r["text"], r["label"]) for r in csv.DictReader(f)]


def main():
    model_dir, train_csv, val_csv = sys.argv[1:4]
    steps, batch, max_len = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    lr, warmup, threads = float(sys.argv[7]), int(sys.argv[8]), int(sys.argv[9])
    torch.set_num_threads(threads)
    torch.manual_seed(1337)
    random.seed(1337)
    train, val = rows(train_csv), rows(val_csv)
    labels = sorted({label for _, label in train})
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=f"{model_dir}/tokenizer.json")
    tokenizer.pad_token = next(t for t in ["[PAD]", "<pad>"] if t in tokenizer.get_vocab())
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(labels), ignore_mismatched_sizes=True
    )
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup))
    )
    start = time.perf_counter()
    for _ in range(steps):
        chunk = random.sample(train, batch)
        enc = tokenizer([t for t, _ in chunk], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        target = torch.tensor([labels.index(label) for _, label in chunk])
        loss = model(**enc, labels=target).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        schedule.step()
        optim.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - start
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(val), 64):
            chunk = val[i : i + 64]
            enc = tokenizer([t for t, _ in chunk], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
            predicted = model(**enc).logits.argmax(-1).tolist()
            correct += sum(labels[p] == label for p, (_, label) in zip(predicted, chunk))
    print(json.dumps({
        "ms_per_step": 1000 * elapsed / steps,
        "samples_per_s": steps * batch / elapsed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "val_accuracy": correct / len(val),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
