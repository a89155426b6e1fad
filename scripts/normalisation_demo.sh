#!/usr/bin/env bash
# Score normalisation on the demo's two systems (run `make demo` first): for none / zscore / inverted-softmax /
# dual-softmax / querybank (QB-Norm, banks of the training captions written by `embed --bank`), search the ensemble weights (and the temperature) on synthetic validation, apply them to dev-test
# and print mAP@16 there; then each system alone (zscore ranks a single matrix like none). Synthetic data: the
# numbers show the commands work end to end, not that a normalisation helps on real data.
set -euo pipefail
DEMO=${1:-demo-work}
DATA="$DEMO/data"
OUT="$DEMO/out/normalisation"
export DCASE_T6_WORKDIR="$DEMO/work"
RELEVANCE="$DATA/relevance/synthetic/development-testing.csv"
VAL_CAPTIONS="$DATA/synthetic/clotho_captions_validation.csv"
VAL=synthetic/development-validation
TEST=synthetic/development-testing
mkdir -p "$OUT"
# the demo ensemble's two runs, from the weights file `make demo` wrote
read -r -a RUNS <<< "$(python3 -c 'import json, re, sys
print(" ".join(re.search(r"runs/([^/]+)/outputs", path).group(1)
               for path in json.load(open(sys.argv[1]))["systems"].values()))' "$DEMO/out/weights.json")"
map16() { dcase-t6 evaluate "$@" -r "$RELEVANCE" --json | python3 -c 'import json, sys
print("%.4f" % json.load(sys.stdin)["mAP@16"])'; }
field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], "-"))' "$1" "$2"; }

# QB-Norm's banks: each run's training captions scored against the validation and the dev-test clips
for RUN in "${RUNS[@]}"; do
  for SPLIT in development-validation development-testing; do
    dcase-t6 embed "$RUN" --data-root "$DATA" --dataset synthetic --split "$SPLIT" \
      --bank development-training --json > /dev/null
  done
done

printf '%-28s %-17s %-12s %s\n' "system" "normalisation" "temperature" "dev-test mAP@16"
for NORM in none zscore inverted-softmax dual-softmax querybank; do
  rm -f "$OUT/ensemble-$NORM.json" "$OUT/ensemble-$NORM.npz"
  VAL_BANKS=() TEST_BANKS=()
  if [ "$NORM" = querybank ]; then
    VAL_BANKS=(--bank "seed0=${RUNS[0]}:$VAL" --bank "seed1=${RUNS[1]}:$VAL")
    TEST_BANKS=(--bank "seed0=${RUNS[0]}:$TEST" --bank "seed1=${RUNS[1]}:$TEST")
  fi
  dcase-t6 ensemble --search -s "seed0=${RUNS[0]}:$VAL" -s "seed1=${RUNS[1]}:$VAL" -c "$VAL_CAPTIONS" \
    --normalize "$NORM" "${VAL_BANKS[@]}" --out "$OUT/ensemble-$NORM.json" --json > /dev/null
  dcase-t6 ensemble --apply -w "$OUT/ensemble-$NORM.json" -s "seed0=${RUNS[0]}:$TEST" -s "seed1=${RUNS[1]}:$TEST" \
    "${TEST_BANKS[@]}" --out "$OUT/ensemble-$NORM.npz" > /dev/null
  printf '%-28s %-17s %-12s %s\n' "ensemble (seed0 + seed1)" "$NORM" "$(field "$OUT/ensemble-$NORM.json" temperature)" \
    "$(map16 -p "$OUT/ensemble-$NORM.npz")"
done
for RUN in "${RUNS[@]}"; do
  printf '%-28s %-17s %-12s %s\n' "$RUN" none - "$(map16 -p "$RUN:$TEST")"
  for NORM in inverted-softmax dual-softmax querybank; do
    rm -f "$OUT/$RUN-$NORM.json"
    SEARCH_BANK=() TEST_BANK=()
    if [ "$NORM" = querybank ]; then SEARCH_BANK=(--bank "$RUN=$RUN:$VAL"); TEST_BANK=(--bank "$RUN:$TEST"); fi
    dcase-t6 ensemble --search -s "$RUN=$RUN:$VAL" -c "$VAL_CAPTIONS" --normalize "$NORM" "${SEARCH_BANK[@]}" \
      --out "$OUT/$RUN-$NORM.json" --json > /dev/null
    printf '%-28s %-17s %-12s %s\n' "$RUN" "$NORM" "$(field "$OUT/$RUN-$NORM.json" temperature)" \
      "$(map16 -p "$RUN:$TEST" --normalise-from "$OUT/$RUN-$NORM.json" "${TEST_BANK[@]}")"
  done
done
