"""The learning-rate schedule, as a pure function of the step (NeMo's `CosineAnnealing` semantics).

NeMo's `WarmupAnnealHoldPolicy` (which `CosineAnnealing` builds on) runs three phases over the
`total_steps` optimizer steps:

1. warmup: `lr * (step + 1) / (warmup_steps + 1)` for `step <= warmup_steps`;
2. cosine decay from `lr` to `min_lr` over `total_steps - warmup_steps - constant_steps` steps;
3. hold: `min_lr` for the last `constant_steps` steps (and for any step past `total_steps`).

`step` is the 0-based index of the optimizer update about to be applied. The `constant` schedule
keeps the warmup and then holds `lr`.
"""

import math

from sft_trainer.config.schema import OptimConfig


def learning_rate(step: int, optim: OptimConfig, total_steps: int) -> float:
    """The learning rate for optimizer update `step` (0-based) of a run of `total_steps` updates."""
    sched = optim.sched
    if sched.warmup_steps > 0 and step <= sched.warmup_steps:
        warm = optim.lr * (step + 1) / (sched.warmup_steps + 1)
        return min(warm, optim.lr)
    if sched.name == "constant":
        return optim.lr
    decay_steps = total_steps - sched.warmup_steps - sched.constant_steps
    if decay_steps <= 0 or step > total_steps:
        return sched.min_lr
    if sched.constant_steps > 0 and step > sched.warmup_steps + decay_steps:
        return sched.min_lr
    progress = min((step - sched.warmup_steps) / decay_steps, 1.0)
    return sched.min_lr + (optim.lr - sched.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
