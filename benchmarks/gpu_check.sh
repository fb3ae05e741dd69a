#!/usr/bin/env bash
# The GPU checks in one prepared run, for a machine with CUDA torch but without this package
# installed (a lent GPU box). Writes logs under ${OUT:-gpu-check}/. Usage, from the repo root:
#   OUT=/some/dir TRAIN_MINUTES=4 bash benchmarks/gpu_check.sh
# 1. benchmarks/bench_gpu.py (network and sample-batching timings) -> docs page copy
# 2. the test suite minus the napari GUI tests, one line per test as it ends (-v), so a
#    run cut short still names its failures
# 3. optionally (TRAIN_MINUTES > 0) a fine-tune of the shipped prior on the GPU
set -u
out=${OUT:-gpu-check}
mkdir -p "$out"
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"

timeout 150 python3 benchmarks/bench_gpu.py --out "$out/gpu.md" > "$out/bench_gpu.log" 2>&1
echo "bench_gpu: exit $?"

ignore=(--ignore=tests/napari)
python3 -c "import distributed" 2>/dev/null || ignore+=(--ignore=tests/test_batch_dask.py)
parallel=()
if python3 -c "import xdist, pytest_timeout" 2>/dev/null; then
    parallel=(-n "$(python3 -c "import os; print(max(1, min(8, (os.cpu_count() or 2) - 2)))")")
    parallel+=(--timeout=120)
fi
timeout "${TEST_SECONDS:-240}" python3 -m pytest tests -p no:cacheprovider "${ignore[@]}" \
    -v "${parallel[@]}" -rfE > "$out/pytest.log" 2>&1
echo "pytest: exit $?"
grep -E "(FAILED|ERROR) " "$out/pytest.log" | sort -u | head -40

if [ "${TRAIN_MINUTES:-0}" != "0" ]; then
    timeout $((TRAIN_MINUTES * 60 + 60)) python3 -m deconflow.priors._cli train \
        --out "$out/prior.pt" --init src/deconflow/priors/weights/default.pt --steps 100000 \
        --max-minutes "$TRAIN_MINUTES" --batch 32 --patch 16 64 64 --lr 1e-3 --seed 2 \
        --device cuda --workers "$(( $(nproc) - 2 ))" -q > "$out/train.log" 2>&1
    echo "train: exit $?"
    tail -2 "$out/train.log"
fi
