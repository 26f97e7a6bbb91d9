"""One training step of several stacks of models, eager or replayed from a CUDA graph."""
from __future__ import annotations

import torch

from .stacked import GradRule, MomentumRule, SGDRule


class Steps:
    """One training step of all stacks on a batch.

    Eager by default, recorded by autograd and applied by the optimizer. With ``written``
    each stack instead takes its backward pass written out
    (:meth:`~lowrank_helpers.training.stacked.StackedMLP.written_step`; no autograd), at the learning
    rate each call passes: plain SGD and SGD with momentum (``momentum``, ``weight_decay``)
    fused into the weights and buffers with no optimizer (``opt`` None); any other optimizer
    gets the gradients in ``.grad`` and steps. On CUDA with ``graphs`` (a constant learning rate, which
    the graph keeps), the first ``WARMUP`` full batches run eagerly
    (real steps, on a side stream as CUDA graph capture requires), then one step is captured
    into a CUDA graph that every later full batch replays: one launch per step instead of a
    few hundred, and no host synchronisation. With several stacks each stack's forward and
    backward are captured on a stream of its own, so that they run side by side on the GPU.
    Batches of another size (an epoch's last) run eagerly. If capture fails, training goes on
    eagerly after a one-line notice.

    ``runs`` are the engine's stacks: each has ``stack`` (its StackedMLP), ``loss_sum`` (a
    tensor the step adds each model's batch loss to, in place) and ``stream`` (set here).
    """
    WARMUP = 3

    def __init__(self, runs: list, opt: torch.optim.Optimizer | None, batch_size: int,
                 device: torch.device, graphs: bool, written: bool = False,
                 momentum: float = 0.0, weight_decay: float = 0.0):
        self.runs, self.opt, self.batch_size = runs, opt, batch_size
        self.written, self.momentum, self.weight_decay = written, momentum, weight_decay
        self.buffers: dict = {}  # momentum buffers of the written-out SGD step
        self.graphs = graphs and device.type == "cuda" and not written
        self.warm, self.graph, self.static = 0, None, None
        self.mode = ("eager" if not written else
                     f"written backward + {type(opt).__name__}" if opt is not None else
                     "fused momentum" if momentum else "fused sgd")

    def _rule(self, lr: float):
        if self.opt is not None:
            return GradRule()
        if self.momentum:
            return MomentumRule(self.buffers, lr, self.momentum, self.weight_decay)
        return SGDRule(lr, self.weight_decay)

    def _step(self, xb, yb, lr: float | None, streams: bool = False) -> None:
        """``lr``: the written-out step's learning rate (None with an optimizer, whose groups
        have it)."""
        if self.written:
            rule = self._rule(lr)
            for r in self.runs:
                r.loss_sum += r.stack.written_step(xb, yb, rule)
            if self.opt is not None:
                self.opt.step()
            return
        self.opt.zero_grad(set_to_none=True)
        if streams:
            main = torch.cuda.current_stream()
            losses = []
            for r in self.runs:
                r.stream.wait_stream(main)
                with torch.cuda.stream(r.stream):
                    losses.append(r.stack.losses(xb, yb))
            for r in self.runs:
                main.wait_stream(r.stream)
        else:
            losses = [r.stack.losses(xb, yb) for r in self.runs]                # (K_s,) each
        torch.stack([l.sum() for l in losses]).sum().backward()
        self.opt.step()
        with torch.no_grad():
            for r, l in zip(self.runs, losses):
                r.loss_sum += l

    def _capture(self, xb, yb) -> bool:
        streams = len(self.runs) > 1
        for attempt in ([True, False] if streams else [False]):
            try:
                if attempt:
                    for r in self.runs:
                        r.stream = torch.cuda.Stream()
                self.static = (xb.clone(), yb.clone())
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._step(*self.static, None, streams=attempt)
                self.graph, self.mode = graph, "cuda graph" + (" + streams" if attempt else "")
                return True
            except Exception as exc:  # capture unsupported here: say so once, go on eagerly
                try:
                    torch.cuda.synchronize()
                except Exception:  # the failed capture's own error, reported below
                    pass
                what = " with a stream per stack" if attempt else ""
                print(f"CUDA graph capture{what} failed ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''}); "
                      + ("trying one stream" if attempt else "training without graphs"))
        self.graphs = False
        return False

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, lr: float) -> None:
        """One step on the batch at learning rate ``lr`` (which the optimizer's groups have
        already; the written-out SGD step takes it here)."""
        if not self.graphs or len(xb) != self.batch_size:
            return self._step(xb, yb, lr)
        if self.graph is None and self.warm < self.WARMUP:
            self.warm += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._step(xb, yb, lr)
            torch.cuda.current_stream().wait_stream(side)
            return None
        if self.graph is None and not self._capture(xb, yb):
            return self._step(xb, yb, lr)
        self.static[0].copy_(xb)
        self.static[1].copy_(yb)
        self.graph.replay()
        return None
