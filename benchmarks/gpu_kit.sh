#!/usr/bin/env bash
# The GPU kit: `benchmarks/gpu_kit.sh prepare` downloads into .whl/ (git-ignored) the wheels that `import upscaler`,
# the CUDA tests and benchmarks/gpu_check.py need and the bare GPU machine (Python 3.12, torch 2.11 + CUDA 13) lacks,
# checks them with the tree against the 64 MiB that may travel, and prints the one command to run there.
set -euo pipefail
cd "$(dirname "$0")/.."
# Carried (pinned to the versions the suite passes with). typer >= 0.29 needs pydantic at run time (lazily).
WHEELS=(av==18.1.0 isal==1.9.1 typer==0.29.2 rich==15.0.0 pillow==13.0.0 pydantic==2.13.4 pydantic-core==2.46.4
        annotated-types==0.7.0 typing-inspection==0.4.5 tifffile==2026.3.3)
# Present on the GPU image (its package list), at versions that do: not carried.
PRESENT=(torch numpy safetensors pytest hypothesis click shellingham annotated-doc markdown-it-py mdurl pygments typing-extensions)
# Not carried: imageio-ffmpeg (a 30 MiB ffmpeg binary; only 16-bit RGB(A) PNG decoding and tests/test_video.py use it)
# and imagecodecs (26 MiB; tifffile needs it for LZW and zstd only: deflate TIFF works without it).
LIMIT=$((64 * 1024 * 1024))
case "${1:-}" in
  prepare)
    rm -rf .whl && mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
    wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
    tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb 2>/dev/null | grep total$ \
            | awk '{s+=$1} END {print s}')
    ls -l .whl
    echo "wheels $((wheels / 1024)) KiB + tree $((tree / 1024)) KiB = $(((wheels + tree) / 1024)) KiB of $((LIMIT / 1024)) KiB"
    if [ $((wheels + tree)) -gt $LIMIT ]; then echo "error: over the 64 MiB that may travel" >&2; exit 1; fi
    echo "carry: [\".whl\"]"
    echo "command: python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:\$PWD && PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --budget-s 420 --out \$OUT/gpu_report"
    ;;
  wheels) printf '%s\n' "${WHEELS[@]}" ;;
  present) printf '%s\n' "${PRESENT[@]}" ;;
  *) echo "usage: benchmarks/gpu_kit.sh prepare|wheels|present" >&2; exit 2 ;;
esac
