#!/usr/bin/env bash
# Wheels the device machine lacks, for bench/gpu_check.sh (Python 3.12, x86-64): about 50 MB into .whl/.
set -eu
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any"
for package in trl==1.16.0 datasets dill multiprocess gguf iterative-stratification bitsandbytes==0.50.2 \
               hjson pydantic pydantic-core annotated-types typing-inspection; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms -d .whl "$package"
done
python3 -m pip download -q --no-deps --no-binary=:all: -d .whl deepspeed==0.19.8  # built without ops at install
du -sh .whl
