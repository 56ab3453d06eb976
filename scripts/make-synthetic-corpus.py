"""Writes a synthetic corpus of about SIZE megabytes for the corpus benchmarks
(scripts/bench-corpus.sh): FILES plain text files of documents, each document a random slice
of data/shakespeare.txt (500 to 5000 characters, so every character is one the char tokenizer
of the shipped corpus knows), documents separated by a blank line. Not committed: it is big.

usage: python3 scripts/make-synthetic-corpus.py OUT_DIR SIZE_MB [FILES]"""
import pathlib
import random
import sys


def main():
    out, size_mb = pathlib.Path(sys.argv[1]), float(sys.argv[2])
    files = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    source = (pathlib.Path(__file__).resolve().parent.parent / "data" / "shakespeare.txt").read_text()
    # Whole lines without blank ones, so each slice is one document in blank-line mode.
    lines = [l for l in source.splitlines() if l.strip()]
    rng = random.Random(1234)
    out.mkdir(parents=True, exist_ok=True)
    per_file = int(size_mb * 1e6 / files)
    for f in range(files):
        with open(out / f"part-{f:03d}.txt", "w", encoding="utf-8") as handle:
            written = 0
            while written < per_file:
                start = rng.randrange(len(lines) - 200)
                doc, n = [], 0
                target = rng.randrange(500, 5000)
                for line in lines[start:]:
                    doc.append(line)
                    n += len(line) + 1
                    if n >= target:
                        break
                text = "\n".join(doc) + "\n\n"
                handle.write(text)
                written += len(text.encode("utf-8"))
    print(f"wrote {files} files of {per_file / 1e6:.0f} MB in {out}")


if __name__ == "__main__":
    main()
