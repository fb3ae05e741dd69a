#!/usr/bin/env bash
# The GPU checks in one prepared run, for a machine with CUDA torch but without this package
# installed (a lent GPU box). Writes logs under ${OUT:-gpu-check}/. Usage, from the repo root:
#   OUT=/some/dir TRAIN_MINUTES=4 bash benchmarks/gpu_check.sh
# TRAIN_PATCH ("Z Y X", default "16 64 64") and TRAIN_BATCH (32) set the fine-tune's batches;
# TEST_FILES (default: tests) narrows the suite, e.g. to the CUDA tests alone.
# Each step runs alone, so that none slows another (on a 16-core H200 box, the suite beside
# a training run took over 300 s and the training made 2.8 steps/s; the suite alone, 8
# processes of 2 threads, takes about 90 s):
# 1. benchmarks/bench_gpu.py (network and sample-batching timings; BENCH_SECONDS=0 skips it)
# 2. the test suite minus the napari GUI tests, one line per test as it ends (-v), so a
#    run cut short still names its failures (TEST_SECONDS=0 skips it)
# 3. optionally (TRAIN_MINUTES > 0) a fine-tune of the shipped prior on the GPU, its
#    batches drawn by worker processes on the other cores
set -u
out=${OUT:-gpu-check}
mkdir -p "$out"
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
cores=$(nproc)

if [ "${BENCH_SECONDS:-150}" != "0" ]; then
    timeout "${BENCH_SECONDS:-150}" python3 benchmarks/bench_gpu.py --out "$out/gpu_timings.md" \
        > "$out/bench_gpu.log" 2>&1
    echo "bench_gpu: exit $?"
fi

if [ "${TEST_SECONDS:-240}" != "0" ]; then
    ignore=(--ignore=tests/napari)
    python3 -c "import distributed" 2>/dev/null || ignore+=(--ignore=tests/test_batch_dask.py)
    # the console script exists only where the package is installed, which this box skips
    ignore+=(--deselect tests/test_cli.py::test_console_script_resolves_and_help_exits_zero)
    parallel=()
    if python3 -c "import xdist, pytest_timeout" 2>/dev/null; then
        parallel=(-n "$(( cores / 2 ))" --timeout=120)
    fi
    OMP_NUM_THREADS=2 timeout "${TEST_SECONDS:-240}" python3 -m pytest ${TEST_FILES:-tests} \
        -p no:cacheprovider "${ignore[@]}" -v "${parallel[@]}" -rfE > "$out/pytest.log" 2>&1
    echo "pytest: exit $?"
    grep -E "(FAILED|ERROR) " "$out/pytest.log" | sort -u | head -40
    tail -1 "$out/pytest.log"
fi

if [ "${TRAIN_MINUTES:-0}" != "0" ]; then
    workers=$(( cores - 2 ))
    # --max-minutes anneals the schedule to its end in time; the outer timeout is a backstop
    timeout "$(python3 -c "print(int(${TRAIN_MINUTES} * 60 + 90))")" python3 -m deconflow.priors._cli \
        train --out "$out/prior.pt" --init "${TRAIN_INIT:-src/deconflow/priors/weights/default.pt}" \
        --steps 100000 --max-minutes "$TRAIN_MINUTES" --batch "${TRAIN_BATCH:-32}" --patch ${TRAIN_PATCH:-16 64 64} --lr 1e-3 \
        --seed "${TRAIN_SEED:-2}" --checkpoint-every 500 --device "${TRAIN_DEVICE:-cuda}" \
        --workers "$workers" -q \
        --note "fine-tune on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1) with $workers data workers, alone on the machine" \
        > "$out/train.log" 2>&1
    echo "train: exit $?"
    tail -2 "$out/train.log"
    rm -f "$out/prior.ckpt.pt"  # optimiser state: not needed back here
fi
