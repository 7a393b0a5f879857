#!/usr/bin/env bash
# The closed loop end to end on the built-in model (smollm2-135m), a few minutes on 2 CPU cores:
#   serve -> traffic -> monitor -> retrain -> gated promotion -> rollback
#
#   bash examples/closed_loop.sh [OUT]        # everything goes to OUT (default runs/closed-loop)
#
# 1. prepare 200 example tickets and train a deliberately weak adapter, v1 (4 steps);
# 2. serve it behind the route `support` (admin key, models_dir = OUT, the monitor's thresholds in serve.yaml);
# 3. simulated users (examples/closed_loop_traffic.py) send tickets, half of them off-topic after a
#    while, and judge each answer (score 5 if right, else score 2 and the right label as a correction);
# 4. `tuneforge monitor` flags the input drift and shows the feedback;
# 5. `tuneforge retrain` builds a dataset from v1's data plus the logged corrections, trains v2 (its
#    config with more steps, --set max_steps=16), compares v1 and v2 on held-out plus fresh examples
#    and, the gate passed, gives v2 10% of the route through the admin API;
# 6. `tuneforge retrain promote` (what cron would run) holds until v2 has feedback, then moves it to 50%;
# 7. users turn unhappy with v2: the next `promote` finds it worse than v1 and rolls the route back;
# 8. `tuneforge monitor` shows every promotion step with who, when and why.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/closed-loop}
TF=${TF:-.venv/bin/tuneforge}
PY=${PY:-.venv/bin/python}
PORT=${PORT:-8765}
ADMIN=closed-loop-admin-key
URL=http://127.0.0.1:$PORT
export HF_HUB_OFFLINE=1
rm -rf "$OUT" && mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

step() { printf '\n== %s\n' "$*"; }

step "1. prepare and train v1 (weak on purpose: 4 steps)"
head -200 examples/support_tickets.jsonl > "$OUT/tickets.jsonl"
$TF prepare "$OUT/tickets.jsonl" --out "$OUT/data" --no-memorisation-check > /dev/null
$TF train --data "$OUT/data" --out "$OUT/v1" --max-steps 4 --set eval_limit=8 --set tracking=[] > /dev/null
echo "v1: $(cat "$OUT/v1/summary.json" | $PY -c 'import json,sys; s=json.load(sys.stdin); print(s["steps"], "steps, eval loss", round(s["best_eval_loss"], 3))')"

step "2. serve v1 behind route support"
cat > "$OUT/serve.yaml" <<EOF
adapters: {v1: $OUT/v1}
models_dir: $OUT
log_db: $OUT/log.db
routes:
  support: {variants: {v1: 100}}
monitor: {min_requests: 10, min_feedback: 4, min_new: 10, min_mean_score: 1.8, promote_steps: [10, 50, 100]}
EOF
$TF serve --config "$OUT/serve.yaml" --port "$PORT" --admin-key "$ADMIN" > "$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf "$URL/health" > /dev/null && break; sleep 1; done
curl -sf "$URL/health" > /dev/null || { cat "$OUT/serve.log"; exit 1; }
echo "serving at $URL (pid $SERVER)"

step "3. traffic: 30 tickets, then 40 more of which the last 20 are off-topic"
$PY examples/closed_loop_traffic.py --url "$URL" --route support --n 30 --offset 600
$PY examples/closed_loop_traffic.py --url "$URL" --route support --n 40 --offset 630 --shift-from 20

step "4. monitor: input drift flagged, feedback per variant"
$TF monitor --route support --config "$OUT/serve.yaml" --since 1h || true
$TF monitor --route support --config "$OUT/serve.yaml" --since 1h --fail-if "v1.input_drift > 0" > /dev/null \
  && echo "drift gate: passed" || echo "drift gate: fail-if holds (exit $?)"

step "5. retrain on the logged corrections; the gate; first promotion step"
$TF retrain --route support --out "$OUT/v2" --name v2 --config "$OUT/serve.yaml" --set max_steps=16 \
  --set eval_limit=8 --set tracking=[] --server "$URL" --admin-key "$ADMIN"
$PY -c "import json; r=json.load(open('$OUT/v2/retrain.json')); print({k: r[k] for k in ('metric', 'current_score', 'candidate_score', 'diff', 'test_examples', 'fresh_examples')})"

step "6. promotion held until v2 has feedback, then 50%"
$TF retrain promote --route support --config "$OUT/serve.yaml" --server "$URL" --admin-key "$ADMIN"
for round in 1 2 3 4; do
  $PY examples/closed_loop_traffic.py --url "$URL" --route support --n 40 --offset $((200 + 40 * round)) \
    --user-prefix "r$round"
  line=$($TF retrain promote --route support --config "$OUT/serve.yaml" --server "$URL" --admin-key "$ADMIN" 2>&1) || true
  echo "$line"
  case "$line" in *"step (50%)"*) break ;; esac
done

step "7. users turn unhappy with v2: the next promotion step rolls back"
$PY examples/closed_loop_traffic.py --url "$URL" --route support --n 30 --offset 450 --unhappy-with v2 \
  --user-prefix unhappy
set +e
$TF retrain promote --route support --config "$OUT/serve.yaml" --server "$URL" --admin-key "$ADMIN"
echo "promote exit code: $?"
set -e
curl -sf -H "Authorization: Bearer $ADMIN" "$URL/v1/routes"; echo

step "8. monitor: the promotion history; /metrics"
$TF monitor --route support --config "$OUT/serve.yaml" --since 1h || true
curl -sf "$URL/metrics" | grep -E '^tuneforge_monitor_signal\{route="support",signal="(failed_checks|input_drift|mean_score)"' || true
