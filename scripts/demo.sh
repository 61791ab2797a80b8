#!/usr/bin/env bash
# `make demo`: the pipeline on a small default, in a throw-away registry unless PWM_HOME is set.
set -euo pipefail
export PWM_HOME="${PWM_HOME:-$(pwd)/.demo-home}"
echo "== pwmctl demo (registry: $PWM_HOME)"
pwmctl --version
echo "== 1. collect random-policy episodes on two small tasks"
pwmctl collect cartpole-balance,pendulum-swingup --episodes 20 --workers 2 --name demo
pwmctl data info dataset/demo
echo "== 2. pre-train a 1M world model on them (a short CPU run: held-out errors should fall)"
pwmctl pretrain --tasks cartpole-balance,pendulum-swingup --data dataset/demo --size 1M --steps 300 \
  --batch-size 64 --set val_every=100 --set log_every=50 --name demo-1m
pwmctl ls
echo "== 3. extract / eval / finetune / push: coming in the next issues (PWM extraction, evaluation, Hub)"
