#!/usr/bin/env bash
# `make demo`: the pipeline on a small default, in a throw-away registry unless PWM_HOME is set.
set -euo pipefail
export PWM_HOME="${PWM_HOME:-$(pwd)/.demo-home}"
echo "== pwmctl demo (registry: $PWM_HOME)"
pwmctl --version
pwmctl collect cartpole-balance --episodes 4 --workers 2 --name demo-cartpole
pwmctl data info dataset/demo-cartpole
pwmctl ls
echo "== pretrain / extract / eval: coming in a later issue (world model, PWM extraction)"
