#!/usr/bin/env bash
# Rebuilds src/core/runtime/kernels/helios_ops.ptx from helios_ops.cu (the com.helios fused operators,
# docs/fused-ops.md) with nvcc 13.0 from PyPI: no CUDA installation needed. The PTX targets compute_75 and
# uses no CUDA headers, so any driver of CUDA 13.0 or later JIT-compiles it for its GPU.
#
#   tools/kernels/build_ptx.sh            # installs the pinned nvcc into $HELIOS_NVCC_DIR on first use
#   HELIOS_NVCC_DIR=/opt/nvcc13 tools/kernels/build_ptx.sh
#
# Also prints ptxas' register / spill report for sm_90 (H100, H200) so a change that spills shows up here.
# cargo test checks that the PTX's first line names the sha256 of the .cu it came from.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
src="$repo/src/core/runtime/kernels/helios_ops.cu"
out="$repo/src/core/runtime/kernels/helios_ops.ptx"
tools=${HELIOS_NVCC_DIR:-/tmp/helios-nvcc-13.0}
nvcc="$tools/nvidia/cu13/bin/nvcc"
if [ ! -x "$nvcc" ]; then
    echo "installing nvcc 13.0 (tools/kernels/requirements.txt) into $tools"
    python3 -m pip install -q --no-deps --target "$tools" -r "$repo/tools/kernels/requirements.txt"
fi
export PATH="$tools/nvidia/cu13/bin:$PATH"
version=$("$nvcc" --version | sed -n 's/.*release \([0-9.]*\), V\([0-9.]*\).*/\2/p')
[ "$version" = "13.0.88" ] || { echo "expected nvcc 13.0.88, found '$version'" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$nvcc" -ptx -arch=compute_75 -O3 -o "$tmp/helios_ops.ptx" "$src"
grep -q '^\.version 9\.0$' "$tmp/helios_ops.ptx" || { echo "unexpected PTX version" >&2; exit 1; }
sum=$(sha256sum "$src" | cut -d' ' -f1)
{
    echo "// helios_ops.cu sha256 $sum (tools/kernels/build_ptx.sh: nvcc $version -ptx -arch=compute_75 -O3)"
    cat "$tmp/helios_ops.ptx"
} > "$out"
echo "wrote $out ($(wc -c < "$out") bytes)"
"$nvcc" -cubin -arch=sm_90 -O3 -Xptxas -v -o "$tmp/helios_ops.cubin" "$src" 2>&1 \
    | grep -E 'Function properties|spill|registers' | paste - - - \
    | sed -E 's/.*properties for ([a-z0-9_]+).* ([0-9]+) bytes spill stores.*Used ([0-9]+) registers.*/sm_90 \1: \3 registers, \2 bytes spilled/'
