#!/usr/bin/env bash
# Issue 16's acceptance: the same search (search_spaces/early_stopping.yaml, 10 trials) with MO-ASHA on
# and off, search seeds 0, 1 and 2, run one after another (on then off, per seed, so slow drift of a shared
# machine hits both), then compared: hypervolume per device-minute and the fronts found.
#   bash bench/early_stopping.sh [OUT_ROOT] [--set KEY=VALUE ...]   # about 75 minutes on 2 cores; not part of CI
#   SEEDS="3 4" bash bench/early_stopping.sh runs/es                # other search seeds, added to OUT_ROOT
# Every --set goes to each sweep (e.g. --set world.fresh_general=false: another world). The comparison at the
# end takes every es_{on,off}_s<seed> sweep under OUT_ROOT, so seeds run at different times are compared together.
# Past TPE's 10 random trials, give both arms the hypervolume's box, or the baseline spends its trials where the
# hypervolume counts nothing and early stopping looks better than it is (README: 1.56x without, 1.24x with):
#   SEEDS=0 bash bench/early_stopping.sh runs/es30c --set search.trials=30 --set 'constraints={forgetting: "<= 20"}'
# Curves that rank the trials (256 sampled items, the margins halved for 4x the items; 50 to 65 minutes a seed on 2 cores):
#   SEEDS="10 11" bash bench/early_stopping.sh runs/es256 --set curves.limit=256 --set curves.subset=sample \
#     --set 'search.early_stopping.epsilon={medmcqa_gain_pp: 3, forgetting: 1.5}'
# The same with SMF first judged at step 120 (seeds 12 and 13: 60 and 67 minutes a seed, the first with the world's 6.5-minute build):
#   SEEDS="12 13" bash bench/early_stopping.sh runs/es256g --set curves.limit=256 --set curves.subset=sample \
#     --set 'search.early_stopping.epsilon={medmcqa_gain_pp: 3, forgetting: 1.5}' \
#     --set 'search.early_stopping.grace_per_method={smf: 120}'
set -euo pipefail
root=${1:-runs}
shift $(( $# > 0 ? 1 : 0 ))
sets=("$@")
for seed in ${SEEDS:-0 1 2}; do
  for arm in on off; do
    extra=()
    [ "$arm" = off ] && extra=(--set search.early_stopping=null)
    echo "== es_${arm}_s${seed} $(date -u +%H:%M:%S)"
    /usr/bin/time -f "es_${arm}_s${seed}: %e s wall" python -m smf_sweep.tune search_spaces/early_stopping.yaml \
      --storage "$root" --set "name=es_${arm}_s${seed}" --set "search.seed=${seed}" "${sets[@]}" "${extra[@]}" --quiet --json | tail -1
  done
done
python -m analysis.compare "$root"/es_on_s* "$root"/es_off_s* --out "$root/es_compare"
