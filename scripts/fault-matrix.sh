#!/usr/bin/env bash
# Fault matrix: kill -9 at random steps (checkpoints every step and every 10 steps), SIGINT,
# SIGTERM and a full disk (a small tmpfs), each resumed to the end and compared, step by step,
# with an uninterrupted run. Each fault waits for the state it needs (a logged step past a
# random one, read from metrics.jsonl), not a fixed sleep, so a busy machine delays it rather
# than moving it past the run's end; a run that finished before its kill counts as recovered
# only if its losses match. Prints one line of counts, e.g.
#   kill9=20/20 sigint=ok sigterm=ok disk_full=ok mismatched_steps=0 leftovers=0
# Usage: scripts/fault-matrix.sh [--trials N] [--steps S]. Needs a release build (made here).
set -euo pipefail
cd "$(dirname "$0")/.."
trials=20
steps=60
while [ $# -gt 0 ]; do
    case "$1" in
        --trials) trials="$2"; shift 2 ;;
        --steps) steps="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
bin=$(scripts/taper-bin.sh --quiet)
work="$(mktemp -d)"
trap 'umount "$work/tmpfs" 2>/dev/null || true; rm -rf "$work"' EXIT
# A small model, so a trial takes seconds; the schedule does not depend on checkpointing.
base=(configs/gpt-shakespeare-char.toml --set "train.steps=$steps" --set train.log_every=1
      --set train.eval_every=20 --set schedule.warmup_steps=10 --set model.n_layer=2 --set model.d_model=64 --set model.n_head=4 --quiet)

# Step-by-step comparison with the reference: prints the number of missing, repeated or
# different steps (losses compared exactly: resume is bit-identical on the CPU).
compare() {
    python3 - "$work/reference/metrics.jsonl" "$1/metrics.jsonl" <<'PY'
import json, sys
def losses(path):
    out = {}
    bad = 0
    for line in open(path):
        r = json.loads(line)
        if "loss" in r:
            bad += r["step"] in out
            out[r["step"]] = r["loss"]
    return out, bad
ref, _ = losses(sys.argv[1])
got, repeated = losses(sys.argv[2])
print(repeated + sum(1 for s in ref if got.get(s) != ref[s]) + sum(1 for s in got if s not in ref))
PY
}
leftovers() {  # temporary or trash files and folders left in a run directory
    find "$1" \( -name '*.tmp' -o -name '*.trash' \) | wc -l
}
# Waits until run $1 has logged step $2 or later (or the process $3 has ended).
wait_for_step() {
    while kill -0 "$3" 2>/dev/null; do
        python3 - "$1/metrics.jsonl" "$2" <<'PY' && return 0
import json, sys
try:
    steps = [json.loads(l).get("step", 0) for l in open(sys.argv[1]) if l.strip().endswith("}")]
except (OSError, ValueError):
    steps = []
sys.exit(0 if steps and max(steps) >= int(sys.argv[2]) else 1)
PY
        sleep 0.01
    done
}
finished() {  # whether run $1 has ended its run (summary.json says finished)
    [ "$(python3 -c "import json; print(json.load(open('$1/summary.json'))['status'])" 2>/dev/null)" = finished ]
}
finish() {  # resumes (or restarts) a run until it is done; rc of the last command
    local dir="$1"
    shift
    if finished "$dir"; then
        return 0  # it ended before its fault: its losses are compared as they are
    elif [ -d "$dir/checkpoints" ] && ls "$dir/checkpoints" | grep -q '^step-[0-9]*$'; then
        "$bin" train --resume "$dir" --quiet "$@"
    else
        "$bin" train "${base[@]}" --set "checkpoint.dir=$dir" --overwrite "$@"
    fi
}

"$bin" train "${base[@]}" --set "checkpoint.dir=$work/reference" >/dev/null 2>&1

mismatched=0
left=0
kill_ok=0
for i in $(seq 1 "$trials"); do
    dir="$work/kill$i"
    every=$([ $((i % 2)) -eq 0 ] && echo 1 || echo 10)
    at=$(python3 -c "import random; print(random.randint(1, $steps - 1))")
    "$bin" train "${base[@]}" --set "checkpoint.dir=$dir" --set "checkpoint.every=$every" >/dev/null 2>&1 &
    pid=$!
    wait_for_step "$dir" "$at" "$pid"
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if finish "$dir" >/dev/null 2>"$work/err$i"; then
        m=$(compare "$dir")
        mismatched=$((mismatched + m))
        [ "$m" -eq 0 ] && kill_ok=$((kill_ok + 1))
    else
        echo "kill9 trial $i (every $every, at step $at): resume failed: $(tail -2 "$work/err$i")" >&2
    fi
    left=$((left + $(leftovers "$dir")))
done

signal_trial() {  # name signal expected-exit-code
    local dir="$work/$1" rc=0
    "$bin" train "${base[@]}" --set "checkpoint.dir=$dir" --set checkpoint.every=0 >/dev/null 2>&1 &
    local pid=$!
    wait_for_step "$dir" $((steps / 2)) "$pid"
    kill -"$2" "$pid"
    wait "$pid" || rc=$?
    local status
    status=$(python3 -c "import json; print(json.load(open('$dir/summary.json'))['status'])" 2>/dev/null || echo none)
    if [ "$rc" -ne "$3" ] || [ "$status" != interrupted ] || ! finish "$dir" >/dev/null 2>&1; then
        echo "fail(rc=$rc,status=$status)"
        return
    fi
    local m
    m=$(compare "$dir")
    mismatched=$((mismatched + m))
    left=$((left + $(leftovers "$dir")))
    [ "$m" -eq 0 ] && echo ok || echo "fail(mismatched=$m)"
}
sigint=$(signal_trial sigint INT 130)
sigterm=$(signal_trial sigterm TERM 143)

# A full disk: the run fails with an error (no panic), keeps its intact checkpoints, and,
# copied to a disk with room, resumes to the reference.
disk_full=skipped
mkdir -p "$work/tmpfs"
if mount -t tmpfs -o size=12m tmpfs "$work/tmpfs" 2>/dev/null; then
    dir="$work/tmpfs/run"
    if "$bin" train "${base[@]}" --set "checkpoint.dir=$dir" --set checkpoint.every=1 \
        --set checkpoint.keep_last=100 >/dev/null 2>"$work/disk.err"; then
        disk_full="fail(the disk never filled)"
    elif grep -q panicked "$work/disk.err"; then
        disk_full="fail(panic)"
    else
        left=$((left + $(leftovers "$dir")))
        cp -r "$dir" "$work/disk-run"
        umount "$work/tmpfs"
        if finish "$work/disk-run" --set checkpoint.keep_last=2 >/dev/null 2>&1; then
            m=$(compare "$work/disk-run")
            mismatched=$((mismatched + m))
            [ "$m" -eq 0 ] && disk_full=ok || disk_full="fail(mismatched=$m)"
        else
            disk_full="fail(resume)"
        fi
    fi
fi
echo "kill9=$kill_ok/$trials sigint=$sigint sigterm=$sigterm disk_full=$disk_full mismatched_steps=$mismatched leftovers=$left"
