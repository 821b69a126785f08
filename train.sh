#!/usr/bin/env bash
# Start training: read config/config.env (launch settings), then run train.py
# under `accelerate launch`.  Options for the run itself live in
# config/config.json; any arguments given here are passed on to train.py.
# (--mixed_precision below only silences accelerate's launcher: the trainer
# passes the config's --mixed_precision to Accelerator, which takes precedence.)
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

env_file="config/config.env"
if [ -n "${ENV:-}" ] && [ "${ENV}" != "default" ]; then
    env_file="config/${ENV}/config.env"
fi
if [ -f "$env_file" ]; then
    set -a
    # shellcheck disable=SC1090
    source "$env_file"
    set +a
fi

venv="${VENV_PATH:-.venv}"
if [ -f "$venv/bin/activate" ]; then
    # shellcheck disable=SC1091
    source "$venv/bin/activate"
fi

num_processes="${TRAINING_NUM_PROCESSES:-1}"
# accelerate launch accepts backend names in lower case only (the trainer accepts both).
dynamo_backend="$(printf '%s' "${TRAINING_DYNAMO_BACKEND:-no}" | tr '[:upper:]' '[:lower:]')"
extra_args="${ACCELERATE_EXTRA_ARGS:-}"
# Several processes on one machine need accelerate's multi-process launcher.
if [ "$num_processes" -gt 1 ] && [[ "$extra_args" != *--multi_gpu* ]]; then
    extra_args="--multi_gpu $extra_args"
fi

# accelerate launch pins each process to one CPU thread unless told otherwise,
# which halves CPU-bound work on a 2-core machine.  Share the cores instead;
# an OMP_NUM_THREADS set by the user wins.
cores="$(nproc 2>/dev/null || echo 1)"
threads="${OMP_NUM_THREADS:-$(( cores / num_processes > 0 ? cores / num_processes : 1 ))}"

if ! command -v accelerate >/dev/null 2>&1; then
    echo "error: 'accelerate' is not on PATH; install the project first (see README.md)" >&2
    exit 2
fi

# shellcheck disable=SC2086
exec accelerate launch $extra_args \
    --num_processes="$num_processes" \
    --num_machines=1 \
    --num_cpu_threads_per_process="$threads" \
    --mixed_precision=no \
    --dynamo_backend="$dynamo_backend" \
    "$script_dir/train.py" "$@"
