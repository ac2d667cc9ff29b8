# Shared by the run scripts (sourced, not run). Environment: DATA (dataset root, default ./data),
# OUTPUT (output root, default ./output), SHOTS (default 16), PYTHON (default python), FORCE=1 (rerun),
# RERUN_STALE=1 (rerun a finished run made by another config, weights, split or code; see
# tools/provenance.py), ALLOW_CODE_CHANGE=1 (a run of another code version is not stale),
# NGPU (processes, one per GPU, default 1; above 1 train.py runs under torchrun).
# SWEEP_PLAN=1: a script prints what it would run instead of running it (see prepare_run); tools.sweep
# plans its jobs this way, so the run folders are defined here only.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=${DATA:-./data}
OUTPUT=${OUTPUT:-./output}
SHOTS=${SHOTS:-16}
PYTHON=${PYTHON:-python}
FORCE=${FORCE:-0}
RERUN_STALE=${RERUN_STALE:-0}
ALLOW_CODE_CHANGE=${ALLOW_CODE_CHANGE:-0}
NGPU=${NGPU:-1}
PLAN=${SWEEP_PLAN:-0}

TRAIN_END="Finish training"
EVAL_END="=> result"
EX_IN_USE=75   # EX_TEMPFAIL, as train.py: the run folder is held by another live process

die() {
    echo "Error: $*" >&2
    exit 1
}

# The recipe a trainer runs when no CFG is given: configs/trainers/<TRAINER>/default_cfg.txt.
default_cfg() {
    local file="$REPO/configs/trainers/$1/default_cfg.txt"
    [[ -f "$file" ]] || die "unknown trainer '$1': no $file (trainers: $(ls "$REPO/configs/trainers" | tr '\n' ' '))"
    tr -d '[:space:]' < "$file"
}

# True when $1 is a config KEY (they all contain a dot), i.e. not an optional TRAINER or CFG argument.
is_option_key() {
    [[ "$1" == *.* ]]
}

# Reads "[--force] [--rerun-stale] [--allow-code-change] NAMES... [TRAINER] [CFG] [KEY VALUE ...]": $1
# names the leading arguments (e.g. "DATASET SEED"), which are set as variables of those names, then
# FORCE, RERUN_STALE, ALLOW_CODE_CHANGE, TRAINER, CFG and OPTS (the rest).
parse_args() {
    local names
    read -r -a names <<< "$1"
    shift
    while (( $# )); do
        case "$1" in
            --force) FORCE=1 ;;
            --rerun-stale) RERUN_STALE=1 ;;
            --allow-code-change) ALLOW_CODE_CHANGE=1 ;;
            *) break ;;
        esac
        shift
    done
    (( $# >= ${#names[@]} )) || die "usage: $0 [--force] [--rerun-stale] [--allow-code-change] ${names[*]} [TRAINER] [CFG] [KEY VALUE ...]"
    local name
    for name in "${names[@]}"; do
        printf -v "$name" '%s' "$1"
        shift
    done
    TRAINER=MuPL
    if (( $# )) && ! is_option_key "$1"; then TRAINER=$1; shift; fi
    CFG=$(default_cfg "$TRAINER")
    if (( $# )) && ! is_option_key "$1"; then CFG=$1; shift; fi
    OPTS=("$@")
}

# The train.py arguments every run shares, for output folder $1 (needs DS_CFG and CFG_FILE).
set_run_args() {
    ARGS=(--root "$DATA" --seed "$SEED" --trainer "$TRAINER" --dataset-config-file "$DS_CFG"
          --config-file "$CFG_FILE" --output-dir "$1")
}

# A training run; ZeroshotCLIP has nothing to train, so its run is an evaluation. Sets MARKER, the
# line that ends a finished run's log.
add_train_args() {
    MARKER=$TRAIN_END
    if [[ "$TRAINER" == ZeroshotCLIP ]]; then
        ARGS+=(--eval-only)
        MARKER=$EVAL_END
    fi
}

# An evaluation run of the model trained in folder $1 (none for ZeroshotCLIP) at its last epoch; stops
# with the training command $2 when that run has not finished. Sets NEEDS, the folder it reads.
add_eval_args() {
    ARGS+=(--eval-only)
    [[ "$TRAINER" != ZeroshotCLIP ]] || return 0
    NEEDS=$1
    [[ "$PLAN" != 1 ]] || return 0
    require_finished_training "$1" "$2"
    ARGS+=(--model-dir "$1" --load-epoch "$(max_epoch "$CFG_FILE" "${OPTS[@]}")")
}

# Sets CFG_FILE and DS_CFG for TRAINER $1, CFG $2, DATASET $3, or stops with the missing file's name.
find_configs() {
    CFG_FILE="$REPO/configs/trainers/$1/$2.yaml"
    DS_CFG="$REPO/configs/datasets/$3.yaml"
    [[ -f "$CFG_FILE" ]] || die "no config $CFG_FILE (TRAINER=$1 CFG=$2)"
    [[ -f "$DS_CFG" ]] || die "no dataset config $DS_CFG"
}

# A log is finished when a '* accuracy:' line follows the end marker ($2) in one of DIR's log files
# (a resumed run writes a new log.txt-<time> beside the first one).
run_finished() {
    local dir=$1 marker=$2 log
    for log in "$dir"/log.txt*; do
        [[ -f "$log" ]] || continue
        if awk -v marker="$marker" 'index($0, marker) { seen = 1 } seen && /\* accuracy:/ { found = 1 }
                END { exit !found }' "$log"; then
            return 0
        fi
    done
    return 1
}

# Stop with code 75 (and touch nothing) while a live process (train.py, a script, another sweep's job)
# holds the run folder $1's lock (dassl/utils/runlock.py; the kernel frees it when the holder dies).
refuse_if_in_use() {
    local lock="$1/.run.lock"
    [[ -f "$lock" ]] || return 0
    flock --nonblock --shared "$lock" true 2>/dev/null && return 0
    echo "Error: $("$PYTHON" "$REPO/dassl/utils/runlock.py" "$1"); not touched: run again once it has finished" >&2
    exit "$EX_IN_USE"
}

# Whether the finished run in $1 was made by what ARGS (the whole train.py call) would run: sets
# PROVENANCE (same, unknown: no run.json, or stale) and DIFFERS (the keys that differ, for stale).
check_provenance() {
    local out allow=()
    [[ "$ALLOW_CODE_CHANGE" != 1 ]] || allow=(--allow-code-change)
    out=$(PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m tools.provenance check "$1" "${allow[@]}" \
          -- "${ARGS[@]}") || exit 1
    IFS=$'\t' read -r PROVENANCE DIFFERS <<< "$out"
}

# The plan of a run (SWEEP_PLAN=1), one "key<TAB>value" a line: its folder, the folder it needs (a
# trained model, or nothing), whether it is an evaluation, its state (finished, stale, resume or start),
# and for an existing run its provenance (same, unknown or stale) and the keys that differ.
print_plan() {
    local dir=$1 marker=$2 state=start kind=train
    PROVENANCE="" DIFFERS=""
    if run_finished "$dir" "$marker"; then
        state=finished
    elif [[ -d "$dir" ]]; then
        state=resume
    fi
    if [[ -d "$dir" ]]; then
        check_provenance "$dir"
        [[ "$PROVENANCE" != stale ]] || state=stale
    fi
    [[ " ${ARGS[*]} " != *" --eval-only "* ]] || kind=eval
    printf 'run_dir\t%s\nneeds\t%s\nkind\t%s\nstate\t%s\nprovenance\t%s\ndiffers\t%s\n' \
        "$dir" "${NEEDS:-}" "$kind" "$state" "$PROVENANCE" "$DIFFERS"
}

# Move the run folder $1 aside ($1.old-<time>), never deleting it; $2 says why.
move_aside() {
    local aside
    aside="$1.old-$(date +%Y%m%d-%H%M%S)"
    mv "$1" "$aside"
    echo "Moved the $2 run aside to $aside"
}

# Decide what to do with the run folder $1 (ARGS: the whole train.py call): returns 1 (skip) when it
# holds a finished run made by the same config, weights, split, few-shot list and code (or of unknown
# provenance: made before run.json existed). A run made by something else (stale; finished, or
# unfinished, which resuming would mix) stops the script with one line naming it and the keys, unless
# RERUN_STALE=1, which moves it aside and runs again. FORCE=1 moves any existing run aside. Nothing is
# ever deleted. An unfinished folder of the same call is reused: the engine resumes. A folder in use by
# another process is never moved nor reused (exit 75). SWEEP_PLAN=1: print_plan, exit.
prepare_run() {
    local dir=$1 marker=$2 state=unfinished
    if [[ "$PLAN" == 1 ]]; then
        print_plan "$dir" "$marker"
        exit 0
    fi
    refuse_if_in_use "$dir"
    if [[ -d "$dir" && "$FORCE" == 1 ]]; then
        move_aside "$dir" previous
        return 0
    fi
    [[ -d "$dir" ]] || return 0
    ! run_finished "$dir" "$marker" || state=finished
    check_provenance "$dir"
    if [[ "$PROVENANCE" == stale ]]; then
        local keep=""
        [[ "$DIFFERS" != *code* ]] || keep=", or keep it with --allow-code-change where only the code differs"
        [[ "$RERUN_STALE" == 1 ]] || die "stale $state run in $dir: it differs from this call in $DIFFERS; rerun it with --rerun-stale (moves it aside)$keep"
        move_aside "$dir" "stale ($DIFFERS)"
        return 0
    fi
    local note=""
    [[ "$PROVENANCE" != unknown ]] || note="; provenance unknown: no run.json"
    if [[ "$state" == finished ]]; then
        echo "Oops! The results exist at $dir (so skip this job$note)"
        return 1
    fi
    echo "Resuming the unfinished run in $dir"
    return 0
}

# The epoch a training run ends at: the last OPTIM.MAX_EPOCH of the trailing options (yacs lets the
# last one win), else the config file's.
max_epoch() {
    local cfg_file=$1 epoch=""
    shift
    while (( $# >= 2 )); do
        if [[ "$1" == "OPTIM.MAX_EPOCH" ]]; then epoch=$2; fi
        shift 2
    done
    if [[ -n "$epoch" ]]; then
        echo "$epoch"
        return
    fi
    "$PYTHON" -c 'import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1])) or {}
print((cfg.get("OPTIM") or {}).get("MAX_EPOCH", 10))' "$cfg_file"
}

require_finished_training() {
    local dir=$1 command=$2
    if ! run_finished "$dir" "$TRAIN_END"; then
        die "no finished training run in $dir; run first: $command"
    fi
}

# The script's last step: it becomes train.py (exec), so a signal to the script (a sweep stopping its
# jobs, Slurm) reaches train.py itself, which stops with a checkpoint.
run_train_py() {
    [[ "$NGPU" =~ ^[1-9][0-9]*$ ]] || die "NGPU must be a positive number of GPUs, got '$NGPU'"
    if (( NGPU > 1 )); then
        echo "+ $PYTHON -m torch.distributed.run --standalone --nproc_per_node=$NGPU train.py $*"
        exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NGPU" "$REPO/train.py" "$@"
    fi
    echo "+ $PYTHON train.py $*"
    exec "$PYTHON" "$REPO/train.py" "$@"
}
