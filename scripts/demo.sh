#!/usr/bin/env bash
# `make demo`: the quickstart (collect -> pretrain -> extract -> eval vs random) on cartpole-swingup,
# sized by measurement to a 13-minute budget (the install takes the rest of 15), in a throw-away registry unless PWM_HOME is set.
set -euo pipefail
export PWM_HOME="${PWM_HOME:-$(pwd)/.demo-home}"
echo "== pwmctl demo (registry: $PWM_HOME)"
pwmctl --version
pwmctl quickstart --budget-minutes "${BUDGET_MINUTES:-13}"  # 13 + the install stay within 15 minutes
pwmctl ls
echo "== figures and summary: pwmctl show report/quickstart-cartpole-swingup (its folder holds summary.md and the PNGs)"
