"""Writes tests/fixtures/corpus/: the same documents as JSONL and as Parquet (pyarrow, snappy
pages, with a null row and an extra column), for the tests that every corpus format gives the
same ids. Run once with `python3 -m pip install pyarrow`; the outputs are committed."""
import json
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "corpus"
WORDS = "anna helps fred emma calls dirk while the river runs past old mills and quiet fields".split()


def document(i):
    lines = []
    for j in range(1 + i % 4):
        words = [WORDS[(i * 7 + j * 3 + k) % len(WORDS)] for k in range(5 + (i + j) % 6)]
        lines.append(" ".join(words).capitalize() + ("." if j % 2 else ", naïve café."))
    return "\n".join(lines) + "\n"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    docs = [document(i) for i in range(120)]
    with open(OUT / "docs.jsonl", "w", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": i, "text": d}, ensure_ascii=False) + "\n")
    # A null text is skipped by readers, as an empty one: the same documents either way.
    texts = docs[:60] + [None] + docs[60:]
    table = pa.table({"id": list(range(len(texts))), "text": texts})
    pq.write_table(table, OUT / "docs.parquet", compression="snappy", row_group_size=50)
    labelled = pa.table({
        "text": [d.split("\n")[0] for d in docs[:40]],
        "label": ["pos" if i % 2 else "neg" for i in range(40)],
    })
    pq.write_table(labelled, OUT / "labelled.parquet", compression="snappy")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
