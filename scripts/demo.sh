#!/usr/bin/env bash
# The whole pipeline on the built-in synthetic dataset, on CPU:
# prepare -> train (2 systems) -> embed -> ensemble -> evaluate -> package.
set -euo pipefail
DEMO=${1:-demo-work}
DATA="$DEMO/data"
OUT="$DEMO/out"
export DCASE_T6_WORKDIR="$DEMO/work"
mkdir -p "$OUT"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }

step "prepare: synthetic dataset (Clotho layout, 44.1 kHz WAV, multi-relevance dev-test)"
dcase-t6 prepare synthetic --root "$DATA"
RELEVANCE="$DATA/relevance/synthetic/development-testing.csv"
VAL_CAPTIONS="$DATA/synthetic/clotho_captions_validation.csv"

SYSTEMS=()
for SEED in 0 1; do
  step "train: system with seed $SEED (tiny-cnn + frozen MiniLM)"
  RUN=$(dcase-t6 train --config examples/demo-train.yaml --data-root "$DATA" --seed "$SEED" \
        --name "demo-seed$SEED" --json | json_field run)
  for SPLIT in development-validation development-testing; do
    step "embed: $RUN on $SPLIT"
    dcase-t6 embed "$RUN" --data-root "$DATA" --dataset synthetic --split "$SPLIT"
  done
  SYSTEMS+=("$RUN")
done

step "ensemble: grid-search weights on validation mAP@16, apply to dev-test"
dcase-t6 ensemble --search -s "seed0=${SYSTEMS[0]}:synthetic/development-validation" \
  -s "seed1=${SYSTEMS[1]}:synthetic/development-validation" -c "$VAL_CAPTIONS" --out "$OUT/weights.json"
dcase-t6 ensemble --apply -w "$OUT/weights.json" -s "seed0=${SYSTEMS[0]}:synthetic/development-testing" \
  -s "seed1=${SYSTEMS[1]}:synthetic/development-testing" --out "$OUT/ensemble_devtest.csv"

step "evaluate: chance level, each system and the ensemble on the dev-test multi-relevance file"
python3 scripts/chance_level.py "$OUT/ensemble_devtest.csv" "$RELEVANCE"
for RUN in "${SYSTEMS[@]}"; do
  echo "$RUN"
  dcase-t6 evaluate -p "$RUN:synthetic/development-testing" -r "$RELEVANCE"
done
dcase-t6 evaluate -p "$OUT/ensemble_devtest.csv" -r "$RELEVANCE" --ci --per-query "$OUT/per_query.csv"
dcase-t6 evaluate -p "$OUT/ensemble_devtest.csv" -r "$RELEVANCE" --json > "$OUT/results.json"

step "package: metadata, draft report, submission zip, organiser-style check"
LABEL=Demo_DCASET6_task6_1
rm -f "$OUT/meta.yaml"
dcase-t6 package --init-meta --label "$LABEL" --results "$OUT/results.json" \
  --runs "${SYSTEMS[0]},${SYSTEMS[1]}" --out "$OUT/meta.yaml"
python3 scripts/fill_demo_meta.py "$OUT/meta.yaml"
dcase-t6 package -l "$LABEL" -p "$OUT/ensemble_devtest.csv" -m "$OUT/meta.yaml" \
  --draft-report "$OUT/report.pdf" --per-query "$OUT/per_query.csv" --weights "$OUT/weights.json" \
  --runs "${SYSTEMS[0]},${SYSTEMS[1]}" \
  --out "$OUT/submission.zip"
dcase-t6 package --check "$OUT/submission.zip"
step "done: $OUT/submission.zip (runs: dcase-t6 --workdir $DCASE_T6_WORKDIR runs list)"
printf '\nListen to what the systems retrieve, query by query (the ensemble against seed 0; add --open to open a browser, Ctrl-C stops it):\n  '
printf '%q ' dcase-t6 --workdir "$DCASE_T6_WORKDIR" explore -p "ensemble=$OUT/ensemble_devtest.csv" \
  -p "seed0=${SYSTEMS[0]}:synthetic/development-testing" -r "$RELEVANCE" --audio "$DATA/synthetic/audio/evaluation" \
  --clip-captions "$DATA/synthetic/clotho_captions_evaluation.csv"
printf '\n'
