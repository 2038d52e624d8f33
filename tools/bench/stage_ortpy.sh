#!/bin/sh
# Device side: collect the onnxruntime-gpu 1.31.1 Python package, carried as 5 parts in .ortpy/N/ (one part a
# call, calls back to back while the machine is warm), check sha256, unpack into /tmp/ortpy once all are there.
# Then: PYTHONPATH=/tmp/ortpy:$PYTHONPATH python3 ...   (shadows the image's CPU-only onnxruntime 1.30)
set -e
S=/tmp/ortpy-stage; mkdir -p $S
for d in .ortpy/*/; do [ -f "$d/SHA256SUMS" ] && cp "$d"/part.* "$d/SHA256SUMS" $S/ 2>/dev/null || true; done
if [ -d /tmp/ortpy/onnxruntime ]; then echo "stage: already unpacked"; exit 0; fi
missing=""; for i in 0 1 2 3 4; do [ -f $S/part.$i ] || missing="$missing $i"; done
if [ -n "$missing" ]; then echo "stage: still missing:$missing"; exit 0; fi
(cd $S && sha256sum -c --quiet SHA256SUMS)
mkdir -p /tmp/ortpy && cat $S/part.0 $S/part.1 $S/part.2 $S/part.3 $S/part.4 | xz -d -T0 | tar x -C /tmp/ortpy
echo "stage: unpacked into /tmp/ortpy"
