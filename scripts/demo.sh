#!/usr/bin/env bash
# The whole system end to end on one CPU machine: sample data → latent shards → 2-task DeepSpeed
# training through the submitit launcher → evaluation with an NFE sweep, logged to MLflow.
# Finished stages are skipped on a rerun (FRESH=1 redoes everything). Run it through `make demo`.
#
# Knobs (environment): FIRST_STAGE=identity|taesd, WEIGHTS=<dir of taef2_*.pth> (taesd), FRESH=1,
# and for tests DEMO_ROOT (where data/, runs/ and results/ go), STEPS (training steps), EVAL_IMAGES,
# EVAL_NFE (e.g. "[2]"; the evaluation's settings are otherwise those of configs/eval/demo.yaml),
# ENCODE_ARGS (more key=value overrides of the encoding, e.g. "high_res=128 low_res=64").
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
ROOT=${DEMO_ROOT:-.}
FIRST_STAGE=${FIRST_STAGE:-identity}
STEPS=${STEPS:-300}
EVAL_OVERRIDES=(${EVAL_IMAGES:+"num_images=$EVAL_IMAGES"} ${EVAL_NFE:+"nfe=$EVAL_NFE"})
if [ "$FIRST_STAGE" = taesd ]; then
  WEIGHTS=${WEIGHTS:?FIRST_STAGE=taesd needs WEIGHTS=<directory with taef2_encoder.pth and taef2_decoder.pth>}
  ENCODE_CONFIG=configs/encode/sample_taef2.yaml; TRAIN_CONFIG=configs/demo/tiny_cpu_taef2.yaml
  FIRST_STAGE_ARGS=("first_stage.path=$WEIGHTS"); LATENT_NAME=sample_taef2; NAME=demo_taef2
else
  ENCODE_CONFIG=configs/encode/sample.yaml; TRAIN_CONFIG=configs/demo/tiny_cpu.yaml
  FIRST_STAGE_ARGS=(); LATENT_NAME=sample; NAME=demo   # the same latents `make encode-shards` writes
fi
SAMPLE=$ROOT/data/sample; LATENTS=$ROOT/data/latents/$LATENT_NAME; RUN=$ROOT/runs/$NAME; RESULTS=$ROOT/results/$NAME

if [ "${FRESH:-0}" = 1 ]; then rm -rf "$SAMPLE" "$LATENTS" "$RUN" "$RESULTS"; fi

declare -A SECONDS_TAKEN=()
stage() { # stage NAME COMMAND...: run and time one stage
  local name=$1; shift
  echo; echo "=== $name"
  local started; started=$(date +%s)
  "$@"
  SECONDS_TAKEN[$name]=$(( $(date +%s) - started ))
}

stage "sample data" "$PYTHON" -m data_pipeline.sample_data "$SAMPLE"
stage "encode shards" "$PYTHON" -m data_pipeline.encode_shards "$ENCODE_CONFIG" \
  "input=$SAMPLE/shards/{00000..00004}.tar" "output=$LATENTS" "${FIRST_STAGE_ARGS[@]}" ${ENCODE_ARGS:-}

TRAIN_ARGS=("train.run_dir=$RUN" "train.max_steps=$STEPS" "data.train=$LATENTS/shards/{000000..000003}.tar"
            "data.validation=$LATENTS/shards/000004.tar" "${FIRST_STAGE_ARGS[@]}")
finished_step() { # the step of the latest complete checkpoint, or 0
  if [ -f "$RUN/checkpoints/latest" ]; then
    "$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['step'])" \
      "$RUN/checkpoints/$(cat "$RUN/checkpoints/latest")/trainer_state.json"
  else echo 0; fi
}
if [ "$(finished_step)" -ge "$STEPS" ]; then
  echo; echo "=== train: $RUN already trained for $STEPS steps (FRESH=1 to redo)"; SECONDS_TAKEN[train]=0
else
  stage train "$PYTHON" cluster/submit.py --cluster local --nodes 1 --gpus-per-node 2 --wait "$TRAIN_CONFIG" "${TRAIN_ARGS[@]}"
fi

if [ -f "$RESULTS/results.md" ] && [ "$RESULTS/results.md" -nt "$RUN/checkpoints/latest" ]; then
  echo; echo "=== evaluate: $RESULTS is up to date (FRESH=1 to redo)"; SECONDS_TAKEN[evaluate]=0
else
  stage evaluate "$PYTHON" evaluation/run_benchmarks.py --config configs/eval/demo.yaml "models=[$RUN]" \
    "data=$LATENTS/shards/000004.tar" "results_dir=$RESULTS" "${EVAL_OVERRIDES[@]}"
fi

echo
echo "=== FMBoost demo: CFM against its baselines on held-out photos (bicubic: what you get without FMBoost; context: the upsampled context CFM starts from; latent_bilinear: an ablation)"
cat "$RESULTS/results.md"
echo
echo "stage timings (s): sample data ${SECONDS_TAKEN[sample data]}, encode ${SECONDS_TAKEN[encode shards]}," \
     "train ${SECONDS_TAKEN[train]}, evaluate ${SECONDS_TAKEN[evaluate]}"
echo "sample grid:       $RESULTS/samples_grid.png   (columns in $RESULTS/samples_grid.txt)"
echo "training grids:    $RUN/samples/"
echo "plots:             $RESULTS/plots/"
echo "MLflow (training): mlflow ui --backend-store-uri sqlite:///$(cd "$RUN" && pwd)/mlflow.db"
echo "MLflow (eval):     mlflow ui --backend-store-uri sqlite:///$(cd "$RESULTS" && pwd)/mlflow.db"
