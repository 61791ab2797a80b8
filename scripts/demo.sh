#!/usr/bin/env bash
# `make demo`: the pipeline on a small default, in a throw-away registry unless PWM_HOME is set.
# Budgets are tiny so it finishes in minutes on 2 CPU cores; they show the workflow, not final returns.
set -euo pipefail
export PWM_HOME="${PWM_HOME:-$(pwd)/.demo-home}"
echo "== pwmctl demo (registry: $PWM_HOME)"
pwmctl --version
echo "== 1. collect random-policy episodes on two small tasks"
pwmctl collect cartpole-balance,pendulum-swingup --episodes 20 --workers 2 --name demo
pwmctl data info dataset/demo
echo "== 2. pre-train a 1M world model on them (held-out errors should fall)"
pwmctl pretrain --tasks cartpole-balance,pendulum-swingup --data dataset/demo --size 1M --steps 300 \
  --batch-size 64 --set val_every=100 --set log_every=50 --name demo-1m
echo "== 3. extract a PWM policy for cartpole-balance through the frozen world model"
pwmctl extract cartpole-balance --wm worldmodel/demo-1m --steps 100 --batch-size 64 --eval-every 50 \
  --eval-episodes 5 --name demo-cartpole
echo "== 4. evaluate it against the random baseline (IQM with 95% CIs)"
pwmctl eval policy/demo-cartpole random --seeds 5
pwmctl ls
echo "== next: MPPI baseline, online fine-tuning, Hub push/pull and a quickstart that beats random (open issues)"
