"""Prints the cases tests/entity_metrics.rs pins: random true/predicted tag sequences (fixed
seed) per scheme, scored by seqeval (pip install seqeval; 1.2.2 made the committed values):
precision, recall and F1 micro-averaged, strict with the scheme and seqeval's default matching.
Usage: python3 scripts/seqeval-cases.py"""
import random

from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.scheme import IOB1, IOB2, IOBES

rng = random.Random(7)
for name, scheme, prefixes in (("Iob1", IOB1, "BI"), ("Iob2", IOB2, "BI"), ("Iobes", IOBES, "BIES")):
    tags = ["O"] + [f"{p}-{t}" for p in prefixes for t in ("PER", "LOC")]
    for _ in range(3):
        truth = [[rng.choice(tags) for _ in range(rng.randint(3, 9))] for _ in range(4)]
        pred = [[t if rng.random() < 0.6 else rng.choice(tags) for t in s] for s in truth]
        scores = []
        for kwargs in (dict(mode="strict", scheme=scheme), {}):
            scores += [float(f(truth, pred, **kwargs)) for f in (precision_score, recall_score, f1_score)]
        show = lambda seqs: " | ".join(" ".join(s) for s in seqs)
        print(f'    ({name}, "{show(truth)}", "{show(pred)}", {scores}),')
