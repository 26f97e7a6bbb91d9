"""LoRA+ (Hayou, Ghosh & Yu, "LoRA+: Efficient Low Rank Adaptation of Large Models", ICML
2024): B·A as the LoRA layers, with B's learning rate λ times A's.

The paper's argument: with both factors at one rate, feature learning in the width limit is
inefficient; B (d_out × r) needs a larger rate than A (r × d_in). Its recommended ratio is
λ = 2⁴ = 16 (the option ``loraplus_ratio``, default 16; the study sweeps 1, 4, 16; λ = 1 is
the LoRA layers exactly).

Groups. The official implementation (PEFT's ``create_loraplus_optimizer``,
``peft/optimizers/loraplus.py``) puts every 1-D parameter (biases, norms) in B's group, at
λ·lr, and embeddings in a group of their own. Here every tensor that is not a B keeps the
task's rate and groups (nanoGPT's weight-decay split for the transformer): in training from
scratch the biases, norms, embeddings and head are the model's own dense parameters, not
adapter state, and moving them to λ·lr would change a dense part of the model's rate as well
as B's; the comparison with the LoRA layers then isolates the one change LoRA+ argues for.
"""
from __future__ import annotations


from .base import Method, Option, number_check, register_method, register_option

#: The paper's recommended ratio of B's rate to A's.
DEFAULT_RATIO = 16.0


_check = number_check("a positive number (B's rate over A's)")


class LoRAPlus(Method):
    def groups(self, model, run, base):
        """The task's groups, each split in two: its B factors at λ times the group's rate,
        every other tensor at the group's rate (same weight decay)."""
        ratio = run.options.get("loraplus_ratio", DEFAULT_RATIO)
        lr = run.protocol.lr
        names = {id(p): n for n, p in model.named_parameters()}
        out = []
        for g in base:
            extra = {k: v for k, v in g.items() if k != "params"}
            own = g.get("lr", lr)
            b = [p for p in g["params"] if names[id(p)].endswith(".B")]
            rest = [p for p in g["params"] if not names[id(p)].endswith(".B")]
            if rest:
                out.append({**extra, "params": rest, "lr": own})
            if b:
                out.append({**extra, "params": b, "lr": ratio * own})
        return out


register_option(Option("loraplus_ratio", DEFAULT_RATIO, "LoRA+'s λ: B's learning rate over "
                       "A's", check=_check, applies=lambda m: m.name == "loraplus"))
register_method(LoRAPlus("loraplus", "LoRA+ layers", factorized=True, default_init="lora",
                         linestyle="-."))
