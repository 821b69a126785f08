#!/usr/bin/env bash
# Start training: read config/config.env (launch settings), then hand over to
# simpletuner.cli.launch, which checks those settings and trains in this
# process, or starts several through accelerate's launcher.  Options for the
# run itself live in config/config.json; arguments given here are passed on.
#
# A variable already set in the environment wins over config.env, so
# `SIMPLETUNER_LOG_LEVEL=DEBUG ./train.sh` does what it says.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

env_file="config/config.env"
if [ -n "${ENV:-}" ] && [ "${ENV}" != "default" ]; then
    env_file="config/${ENV}/config.env"
elif [ -n "${CONFIG_PATH:-}" ]; then
    # The launch settings beside the config file named (configure.py --config_dir writes both there).
    env_file="$(dirname "${CONFIG_PATH}")/config.env"
fi

# Read config.env in a subshell and take only the variables the environment
# does not set already.  The names taken are passed on, so an error about one
# of them can say it came from the file.
load_env_file() {
    local file="$1" loaded entry name taken=""
    loaded="$(mktemp)"
    # shellcheck disable=SC1090
    if ! (set -a; source "$file" >&2; env -0 > "$loaded"); then
        rm -f "$loaded"
        echo "error: $file could not be read (see the line above); it holds NAME=value lines" >&2
        exit 2
    fi
    while IFS= read -r -d '' entry; do
        name="${entry%%=*}"
        [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
        if [ -z "${!name+set}" ]; then
            export "$entry"
            taken="$taken $name"
        fi
    done < "$loaded"
    rm -f "$loaded"
    export SIMPLETUNER_ENV_FILE="$file" SIMPLETUNER_ENV_FILE_VARS="${taken# }"
}

if [ -f "$env_file" ]; then
    load_env_file "$env_file"
fi

venv="${VENV_PATH:-.venv}"
if [ -f "$venv/bin/activate" ]; then
    # shellcheck disable=SC1091
    source "$venv/bin/activate"
fi

python_bin="$(command -v python || command -v python3 || true)"
if [ -z "$python_bin" ]; then
    echo "error: no python on PATH; install the project first (see README.md) or set VENV_PATH in $env_file" >&2
    exit 2
fi

# This checkout's simpletuner, as train.py next to it would import.
export PYTHONPATH="$script_dir${PYTHONPATH:+:$PYTHONPATH}"
exec "$python_bin" -m simpletuner.cli.launch "$@"
