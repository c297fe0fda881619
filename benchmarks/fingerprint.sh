#!/usr/bin/env bash
# Seeded CPU outputs of every job that computes results, for checking that a change to the code changes
# none of them: run it before and after, then compare the two folders with fingerprint_compare.py.
#   bash benchmarks/fingerprint.sh runs/fp-before   (about 2 minutes on 2 cores)
#   ... change the code ...
#   bash benchmarks/fingerprint.sh runs/fp-after
#   .venv/bin/python benchmarks/fingerprint_compare.py runs/fp-before runs/fp-after
# Covers: abr simulate (every classic rule and the shipped model), abr eval (with clairvoyant and the
# optimum), abr train (plain, with ReSiN, fine-tuned with --init, with --critic-future, through a
# schedule) and abr plasticity-bench. Needs ../shared/traces (TRACES=... for another root).
set -euo pipefail
O=${1:?usage: fingerprint.sh OUTDIR}
S=${TRACES:-../shared/traces}
A=${ABR:-.venv/bin/abr}
rm -rf "$O"; mkdir -p "$O"
quiet() { "$@" > "$O/log.txt" 2>&1 || { cat "$O/log.txt" >&2; exit 1; }; }
quiet $A simulate -t "$S/fcc-test@fold=0/15" -t "$S/norway-test@fold=0/15" -t markov:n=20,seed=3 --video "$S/video-sizes" \
  -p bba -p rb -p bola -p mpc -p robustmpc -p fixed:2 -p default --json "$O/sim.json"
quiet $A eval -t "$S/fcc-test@fold=0/30" -t markov:n=8,seed=4 --video "$S/video-sizes" \
  -p bba -p rb -p bola -p mpc -p robustmpc -p default -p clairvoyant --out "$O/eval"
TRAIN=(-t markov:n=40,seed=2 --num-envs 16 --device cpu)
quiet $A train "${TRAIN[@]}" --steps 30000 --eval-traces markov:n=6,seed=9 --eval-every 5 --seed 3 --out "$O/train"
quiet $A train "${TRAIN[@]}" --steps 30000 --eval-traces markov:n=6,seed=9 --eval-every 5 --seed 4 --plasticity resin \
  --out "$O/train-resin"
quiet $A train "${TRAIN[@]}" --steps 20000 --eval-traces markov:n=6,seed=9 --eval-every 5 --seed 5 --init default \
  --out "$O/train-init"
quiet $A train "${TRAIN[@]}" --steps 20000 --eval-every 5 --seed 6 --critic-future --out "$O/train-cf"
quiet $A train --schedule low-high --scale 0.003 --num-envs 16 --seed 2 --plasticity resin --device cpu --out "$O/sched"
quiet $A plasticity-bench --schedule low-high --methods none,resin,redo --seeds 1 --scale 0.003 --workers 1 \
  --out "$O/bench"
echo "fingerprint: $O"
