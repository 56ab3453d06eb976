"""Builds data/sentiment/{train,val}.csv: sentences of the Shakespeare corpus in data/, labelled
positive or negative by the VADER sentiment lexicon (vaderSentiment 3.3.2, MIT), keeping only
clear cases (|compound| >= 0.5), balanced, shuffled with a fixed seed. Deterministic: re-running
reproduces the files. Usage: python3 make-sentiment-data.py VADER_PACKAGE_DIR"""
import csv
import random
import re
import sys

sys.path.insert(0, sys.argv[1])
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # noqa: E402

text = open("data/shakespeare.txt", encoding="utf-8").read()
# Speech text only: drop speaker names (upper-case lines) and stage directions.
lines = [l.strip() for l in text.splitlines()]
lines = [l for l in lines if l and not l.isupper() and not l.startswith(("Enter", "Exit", "Exeunt", "[", "SCENE", "ACT"))]
flat = re.sub(r"\s+", " ", " ".join(lines))
sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", flat)]
analyzer = SentimentIntensityAnalyzer()
seen, rows = set(), {"positive": [], "negative": []}
for s in sentences:
    words = s.split()
    if not 6 <= len(words) <= 40 or s in seen:
        continue
    seen.add(s)
    compound = analyzer.polarity_scores(s)["compound"]
    if compound >= 0.5:
        rows["positive"].append(s)
    elif compound <= -0.5:
        rows["negative"].append(s)
rng = random.Random(1234)
n = min(len(v) for v in rows.values())
examples = [(s, label) for label, v in sorted(rows.items()) for s in rng.sample(v, n)]
rng.shuffle(examples)
cut = len(examples) * 4 // 5
for name, part in (("train", examples[:cut]), ("val", examples[cut:])):
    with open(f"data/sentiment/{name}.csv.tmp", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows(part)
print(f"{len(examples)} examples ({n} per label): {cut} train, {len(examples) - cut} val")
