#!/usr/bin/env bash
# The GPU checks, as one script for a machine with a CUDA GPU and PyTorch (DVC, DVCLive and
# Prefect are not needed). Results go to $OUT (default reports/gpu/):
#   tests.log        pytest tests/test_engine_devices.py: no host sync per step, resume, compile (CUDA)
#   bench.json       python bench/run.py train scaling serving evaluation (render it into
#                    docs/benchmarks.md with: python bench/run.py --render bench.json)
#   profile.json     where a step's time goes, engine and textbook loop (bench/step_profile.py)
#   stylegan2.log    StyleGAN2 against DCGAN at 64 px (bench/stylegan2.py), FASHION=dir of the IDX files
#   evaluate.log     pytest: evaluate.device auto (the GPU) against cpu on the same tiny model, within 1e-3
#                    (tests/test_metrics.py::test_evaluation_runs_where_evaluate_device_says_and_agrees_with_the_cpu)
#   ddp.log          DDP in 2 processes against 1 accumulating the same shards: NCCL where 2 GPUs are
#                    present (one GPU cannot hold two NCCL ranks: then gloo on the CPU only, and it says so)
#   nvlabs.log/.json StyleGAN2 against NVlabs' stylegan2-ada-pytorch at 64 and 128 px, batch 32
#                    (bench/stylegan2_nvlabs.py, ~4-7 min on an H100), NVLABS=path of a checkout of their
#                    repository (never copied into this one); their CUDA kernels build on first use, which
#                    needs nvcc and ninja (the log says whether they built). Alone, in one command:
#                      PARTS=nvlabs NVLABS=/path/to/stylegan2-ada-pytorch bash bench/gpu_session.sh
# Each part has its own time limit, so one that hangs does not cost the others.
set -u
OUT=${OUT:-reports/gpu}
PARTS=${PARTS:-bench profile tests evaluate ddp stylegan2 nvlabs}  # which parts to run
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
part() {  # part NAME SECONDS COMMAND...: run, keep the log, report how it ended
    local name=$1 limit=$2
    shift 2
    case " $PARTS " in *" $name "*) ;; *) return ;; esac
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - t0)) s"
    tail -n 4 "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
part bench "${BENCH_S:-330}" python3 bench/run.py train scaling serving evaluation --no-docs --out "$OUT/bench.json"
part profile 60 sh -c "python3 bench/step_profile.py --size 64 --batch 64 > '$OUT/profile.json'"
part tests "${TESTS_S:-200}" python3 -m pytest tests/test_engine_devices.py -q -p no:cacheprovider -n 4 --dist load -k cuda -rA
part evaluate 120 python3 -m pytest tests/test_metrics.py -q -p no:cacheprovider -n 0 -k evaluate_device -rA
python3 -c "import torch; n = torch.cuda.device_count(); print(f'{n} GPU(s):', 'DDP with NCCL on 2' if n >= 2 else 'NCCL DDP not possible (one GPU per rank); DDP with gloo on the CPU only')"
part ddp 240 python3 -m pytest tests/test_training.py -q -p no:cacheprovider -k two_process -rA
if [ -n "${FASHION:-}" ]; then
    part stylegan2 "${SG2_S:-240}" python3 bench/stylegan2.py --source idx --path "$FASHION" --size 64 \
        --steps "${SG2_STEPS:-2000}" --batch 64
fi
if [ -n "${NVLABS:-}" ]; then
    part nvlabs "${NVLABS_S:-570}" python3 bench/stylegan2_nvlabs.py --nvlabs "$NVLABS" --resolutions 64 128 \
        --batch "${NVLABS_BATCH:-32}" --out "$OUT/nvlabs.json"
else
    case " $PARTS " in *" nvlabs "*) echo "== nvlabs: skipped (NVLABS=path of a stylegan2-ada-pytorch checkout runs it)" ;; esac
fi
grep -h "CUDA resume" "$OUT/tests.log" | head -2
tail -n 12 "$OUT/stylegan2.log" 2>/dev/null
grep -h "NVlabs kernels" "$OUT/nvlabs.log" 2>/dev/null
