#!/usr/bin/env bash
# Corpora bigger than memory (issue 17, part 5): makes a synthetic corpus of SIZE_MB megabytes
# (scripts/make-synthetic-corpus.py; not kept), then measures on this machine
#   - `taper prepare`: tokenizing it into shards (MB/s, peak RSS), and again (a mapped set);
#   - the `tokenizers` Python package's encode_batch on the same files and tokenizer (MB/s;
#     the first PY_MB=500 megabytes of them);
#   - the default model trained STEPS steps on it and on the shipped 1 MB corpus: peak RSS
#     of each and the wall time to the first step of the second (mapped) start.
# usage: scripts/bench-corpus.sh [SIZE_MB=2000] [STEPS=100]
# The last line: tokenize_mb_s=.. python_mb_s=.. ratio=.. rss_big_mb=.. rss_small_mb=.. ...
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-2000}
STEPS=${2:-100}
WORK=${BENCH_DIR:-/tmp/taper-bench-corpus}
BIN=$(scripts/taper-bin.sh --quiet)
PY=${TOKENIZERS_PYTHON:-$HOME/.cache/taper-bench/tok-venv/bin/python}
if [ ! -x "$PY" ]; then
  python3 -m venv "$HOME/.cache/taper-bench/tok-venv"
  "$HOME/.cache/taper-bench/tok-venv/bin/pip" install --quiet tokenizers
  PY="$HOME/.cache/taper-bench/tok-venv/bin/python"
fi
rm -rf "$WORK" && mkdir -p "$WORK"
python3 scripts/make-synthetic-corpus.py "$WORK/corpus" "$SIZE" 8
CFG=configs/gpt-shakespeare-char.toml
BIG=(--set "data.path=\"$WORK/corpus\"" --set 'data.documents="blank-line"' --set data.val_fraction=0.001
     --set "data.cache_dir=\"$WORK/cache\"")
timed() { /usr/bin/time -f "%e %M" -o "$WORK/time" "$@"; read -r WALL RSS_KB < "$WORK/time"; }

timed "$BIN" prepare "$CFG" "${BIG[@]}"
PREP_S=$WALL; PREP_RSS=$((RSS_KB / 1024))
timed "$BIN" prepare "$CFG" "${BIG[@]}"
WARM_PREP_S=$WALL
BYTES=$(du -sb "$WORK/corpus" | cut -f1)
TOK_MBS=$(python3 -c "print(f'{$BYTES / 1e6 / $PREP_S:.2f}')")

train() { # $1 run dir, rest: overrides
  local dir=$1; shift
  "$BIN" train "$CFG" --set "checkpoint.dir=\"$dir\"" --set train.steps="$STEPS" --set schedule.warmup_steps=10 --set train.eval_every=0 "$@" > "$dir.log" 2>&1
  python3 -c "import json; print(json.load(open('$dir/summary.json'))['peak_rss_mb'])"
}
RSS_BIG=$(train "$WORK/run-big" "${BIG[@]}")
RSS_SMALL=$(train "$WORK/run-small" --set "data.cache_dir=\"$WORK/cache\"")
# A second start on the big corpus: the shards are mapped; time to the first logged step.
START=$(date +%s.%N)
"$BIN" train "$CFG" "${BIG[@]}" --set "checkpoint.dir=\"$WORK/run-big2\"" --set train.steps=1 --set schedule.warmup_steps=0 --set train.log_every=1 \
  --set train.eval_every=0 > "$WORK/run-big2.log" 2>&1
SECOND_START_S=$(python3 -c "import time; print(f'{time.time() - $START:.2f}')")

PY_MBS=$("$PY" - "$WORK/corpus" "$WORK/run-big/tokenizer.json" "${PY_MB:-500}" <<'PYEOF'
import pathlib, sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[2])
# The first files up to PY_MB megabytes: throughput does not depend on the amount.
files, budget = [], float(sys.argv[3]) * 1e6
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.txt")):
    if budget <= 0:
        break
    files.append(f)
    budget -= f.stat().st_size
start, total = time.time(), 0
for f in files:
    text = f.read_text(encoding="utf-8")
    total += len(text.encode("utf-8"))
    docs = [d for d in text.split("\n\n") if d.strip()]
    for i in range(0, len(docs), 4096):
        tok.encode_batch(docs[i:i + 4096], add_special_tokens=False)
print(f"{total / 1e6 / (time.time() - start):.2f}")
PYEOF
)
echo "corpus: $((BYTES / 1000000)) MB in 8 files; $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "prepare: ${PREP_S} s, peak RSS ${PREP_RSS} MB; again (mapped): ${WARM_PREP_S} s"
echo "train ${STEPS} steps: peak RSS ${RSS_BIG} MB on the big corpus, ${RSS_SMALL} MB on data/shakespeare.txt"
echo "tokenize_mb_s=$TOK_MBS python_mb_s=$PY_MBS ratio=$(python3 -c "print(f'{$TOK_MBS / $PY_MBS:.2f}')") \
rss_big_mb=$RSS_BIG rss_small_mb=$RSS_SMALL rss_delta_mb=$(python3 -c "print(f'{$RSS_BIG - $RSS_SMALL:.1f}')") \
second_start_s=$SECOND_START_S"
