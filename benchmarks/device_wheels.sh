#!/usr/bin/env bash
# Wheels for a GPU machine that has PyTorch, transformers, accelerate, typer and tensorboard but no package
# registry (the device machines lent to some sessions: Python 3.12, x86-64). Downloads, into .whl/ (gitignored),
# what pruner needs beyond those, at the versions this project is tested with; benchmarks/gpu_session.sh
# installs them there. Run here, where pip reaches the registry: bash benchmarks/device_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.whl
mkdir -p "$dest"
platforms=()
for n in 2_28 2_27 2_24 2_17 2014 1; do
  case $n in 2014|1) platforms+=(--platform "manylinux${n}_x86_64") ;; *) platforms+=(--platform "manylinux_${n}_x86_64") ;; esac
done
binary=(  # pure-Python wheels and cp312 builds
  diffusers==0.42.1 optuna==5.0.0 torch-pruning==1.6.1 pydantic==2.14.4 pydantic_core==2.50.5
  annotated-types==0.8.0 typing-inspection==0.4.5 alembic==1.20.1 SQLAlchemy==2.1.9 colorlog==6.12.0 Mako==1.4.3
  importlib_metadata==10.2.0 lazy-importer==0.1.0 zipp==4.1.2 yacs==0.1.8 termcolor==3.3.0 typing_extensions==4.16.0
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$dest" "${binary[@]}"
# fvcore and iopath are published as source archives only: build their (pure-Python) wheels here
python3 -m pip wheel -q --no-deps -w "$dest" fvcore==0.1.5.post20221221 iopath==0.1.10
ls "$dest"
du -sh "$dest"
