"""K models of one family as one module: stacked layers, each with its forward pass and its
written-out backward pass side by side.

A stacked layer holds K models' weights with a leading model dimension, stored transposed so
that every product reads contiguous memory. The first layer's input (the images) is the same
for all K models, so its weights are stored (d_in, K, ·) and one (N, d_in) @ (d_in, K·out)
product serves them all; no gradient flows to that input.

Factorized layers of ranks r_k ≤ R are padded with zeros to R: rows r_k..R-1 of A and columns
r_k..R-1 of B. Their gradients are zero (∂L/∂A_j ∝ B_{:,j} = 0, ∂L/∂B_{:,j} ∝ (Ax)_j = 0), so SGD
(with momentum and weight decay) and Adam(W) leave them at zero: each model trains as alone.

``backward`` takes the gradient ∂L/∂y at the layer's output, hands each weight's gradient
product to an update rule, and returns ∂L/∂x, computed from the weights as they were before
the step. The rules (:class:`SGDRule`, :class:`MomentumRule`, :class:`GradRule`) fuse the
product into the update where the optimizer allows it:

- plain SGD adds it straight into the weight (``addmm_``/``baddbmm_`` with alpha = −lr and
  beta = 1 − lr·weight_decay): no gradient tensors at all;
- SGD with momentum adds it straight into the momentum buffer (beta = μ), then steps;
- AdamW (or any other optimizer) gets it in ``.grad`` and steps as usual.

Each is the same step as autograd followed by the ``torch.optim`` optimizer, up to the order
of floating-point sums, without recording a graph.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.mlp import MLP


def _shared(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (N, d_in) times each model's weight in w (d_in, K, m): (K, N, m), one product."""
    n, (d_in, K, m) = x.shape[0], w.shape
    return (x @ w.view(d_in, K * m)).view(n, K, m).transpose(0, 1)


class SGDRule:
    """Plain SGD, fused: w ← (1 − lr·wd)·w − lr·g, the gradient product added into w."""

    def __init__(self, lr: float, weight_decay: float = 0.0):
        self.lr, self.beta = lr, 1.0 - lr * weight_decay

    def mm(self, p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        """The gradient of ``p`` is a·b (batched if 3-d; for 2-d views of a shared layer)."""
        (p.addmm_ if p.dim() == 2 else p.baddbmm_)(a, b, beta=self.beta, alpha=-self.lr)

    def add(self, p: torch.Tensor, g: torch.Tensor) -> None:
        """The gradient of ``p`` is ``g`` (a bias)."""
        if self.beta != 1.0:
            p.mul_(self.beta)
        p.add_(g, alpha=-self.lr)


class MomentumRule:
    """SGD with momentum μ and weight decay as ``torch.optim.SGD`` (dampening 0, not Nesterov):
    buf ← μ·buf + g + wd·w, w ← w − lr·buf. The gradient product is added into the buffer
    (a buffer that starts at 0 gives PyTorch's first step, buf = g). ``buffers``: one per
    parameter, kept by the caller between steps."""

    def __init__(self, buffers: dict, lr: float, momentum: float, weight_decay: float = 0.0):
        self.buffers, self.lr, self.mu, self.wd = buffers, lr, momentum, weight_decay

    def _buf(self, p):
        buf = self.buffers.get(p)
        if buf is None:
            buf = self.buffers[p] = torch.zeros_like(p)
        return buf

    def _step(self, p, buf):
        if self.wd:
            buf.add_(p, alpha=self.wd)
        p.add_(buf, alpha=-self.lr)

    def mm(self, p, a, b) -> None:
        buf = self._buf(p)
        (buf.addmm_ if p.dim() == 2 else buf.baddbmm_)(a, b, beta=self.mu)
        self._step(p, buf)

    def add(self, p, g) -> None:
        buf = self._buf(p)
        buf.mul_(self.mu).add_(g)
        self._step(p, buf)


class GradRule:
    """Writes each gradient into ``p.grad`` (reusing its memory) for an optimizer to apply."""

    @staticmethod
    def _grad(p):
        if p.grad is None:
            p.grad = torch.empty_like(p)
        return p.grad

    def mm(self, p, a, b) -> None:
        g = self._grad(p)
        (torch.mm if p.dim() == 2 else torch.bmm)(a, b, out=g.view(p.shape))

    def add(self, p, g) -> None:
        self._grad(p).copy_(g)


def _shared_grad(rule, w: torch.Tensor, x: torch.Tensor, grad: torch.Tensor) -> None:
    """Hand the gradient xᵀ·grad of each model's w to ``rule``, with w (d_in, K, m), x (N, d_in)
    shared and grad (K, N, m): one (d_in, N) @ (N, K·m) product."""
    d_in, K, m = w.shape
    flat = grad.transpose(0, 1).reshape(x.shape[0], K * m)
    if isinstance(rule, SGDRule):
        w.view(d_in, K * m).addmm_(x.T, flat, beta=rule.beta, alpha=-rule.lr)
    elif isinstance(rule, MomentumRule):
        buf = rule._buf(w)
        buf.view(d_in, K * m).addmm_(x.T, flat, beta=rule.mu)
        rule._step(w, buf)
    else:
        g = GradRule._grad(w)
        torch.mm(x.T, flat, out=g.view(d_in, K * m))


def _stack(tensors: list[torch.Tensor], shared: bool) -> torch.Tensor:
    """(K, d_in, m) from K (d_in, m) tensors, or (d_in, K, m) for a shared input."""
    w = torch.stack(tensors)
    return (w.transpose(0, 1) if shared else w).contiguous()


class StackedDense(nn.Module):
    """K dense layers y_k = x_k·W_kᵀ + b_k: ``W`` = Wᵀ (K, d_in, d_out), or (d_in, K, d_out)
    for a shared input; ``bias`` (K, 1, d_out)."""

    def __init__(self, layers: list[nn.Linear], shared_input: bool):
        super().__init__()
        self.shared_input = shared_input
        with torch.no_grad():
            self.W = nn.Parameter(_stack([m.weight.T for m in layers], shared_input))
            self.bias = nn.Parameter(torch.stack([m.bias for m in layers]).unsqueeze(1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, d_in) shared, or (K, N, d_in) -> y (K, N, d_out)."""
        if self.shared_input:
            return _shared(x, self.W) + self.bias
        return torch.baddbmm(self.bias, x, self.W)

    def forward_saving(self, x):
        return self.forward(x), None

    def backward(self, x, saved, grad, rule):
        """∂L/∂x = grad·W (not for a shared input), from W before the step; ∂L/∂W = xᵀ·grad
        and ∂L/∂b = Σ_n grad go to ``rule``."""
        if self.shared_input:
            down = None
            _shared_grad(rule, self.W, x, grad)
        else:
            down = torch.bmm(grad, self.W.transpose(1, 2))                   # (K, N, d_in)
            rule.mm(self.W, x.transpose(1, 2), grad)
        rule.add(self.bias, grad.sum(1, keepdim=True))
        return down

    def unstack_into(self, k: int, layer: nn.Linear) -> None:
        layer.weight.copy_((self.W[:, k] if self.shared_input else self.W[k]).T)
        layer.bias.copy_(self.bias[k, 0])


class StackedLowRank(nn.Module):
    """K factorized layers y_k = (x_k·A_kᵀ)·B_kᵀ + b_k padded to rank R: ``A`` = Aᵀ
    (K, d_in, R), or (d_in, K, R) for a shared input; ``B`` = Bᵀ (K, R, d_out); ``bias``
    (K, 1, d_out)."""

    def __init__(self, layers: list, rank: int, shared_input: bool):
        super().__init__()
        self.shared_input, self.rank = shared_input, rank
        ref = layers[0].A
        a = torch.zeros(len(layers), layers[0].in_features, rank, dtype=ref.dtype,
                        device=ref.device)                                  # (K, d_in, R)
        b = torch.zeros(len(layers), rank, layers[0].out_features, dtype=ref.dtype,
                        device=ref.device)                                  # (K, R, d_out)
        with torch.no_grad():
            for k, m in enumerate(layers):
                a[k, :, :m.rank] = m.A.T
                b[k, :m.rank] = m.B.T
            self.A = nn.Parameter(a.transpose(0, 1).contiguous() if shared_input else a)
            self.B = nn.Parameter(b)
            self.bias = nn.Parameter(torch.stack([m.bias for m in layers]).unsqueeze(1).clone())

    def forward_saving(self, x):
        """y (K, N, d_out) and u = A·x (K, N, R), which the backward pass needs."""
        u = _shared(x, self.A) if self.shared_input else torch.bmm(x, self.A)
        return torch.baddbmm(self.bias, u, self.B), u

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, d_in) shared, or (K, N, d_in) -> y (K, N, d_out). (For autograd, u is made
        contiguous first: its backward products then read contiguous memory.)"""
        u = _shared(x, self.A).contiguous() if self.shared_input else torch.bmm(x, self.A)
        return torch.baddbmm(self.bias, u, self.B)

    def backward(self, x, u, grad, rule):
        """∂L/∂u = grad·B, ∂L/∂x = ∂L/∂u·A (not for a shared input), both from the factors
        before the step; ∂L/∂B = uᵀ·grad, ∂L/∂A = xᵀ·∂L/∂u and ∂L/∂b go to ``rule``."""
        grad_u = torch.bmm(grad, self.B.transpose(1, 2))                     # (K, N, R)
        rule.mm(self.B, u.transpose(1, 2), grad)
        if self.shared_input:
            down = None
            _shared_grad(rule, self.A, x, grad_u)
        else:
            down = torch.bmm(grad_u, self.A.transpose(1, 2))                 # (K, N, d_in)
            rule.mm(self.A, x.transpose(1, 2), grad_u)
        rule.add(self.bias, grad.sum(1, keepdim=True))
        return down

    def unstack_into(self, k: int, layer) -> None:
        a = self.A[:, k] if self.shared_input else self.A[k]                 # (d_in, R)
        layer.A.copy_(a[:, :layer.rank].T)
        layer.B.copy_(self.B[k, :layer.rank].T)
        layer.bias.copy_(self.bias[k, 0])


def cross_entropy_with_grad(logits: torch.Tensor, y: torch.Tensor):
    """Each model's mean cross-entropy on the batch (K,) and its gradient at the logits,
    ∂L/∂z = (softmax(z) − onehot(y)) / N, (K, N, C); the log-softmax is computed once."""
    K, n, _ = logits.shape
    logp = torch.log_softmax(logits, dim=2)                                  # (K, N, C)
    label = y.view(1, n, 1).expand(K, n, 1)
    picked = logp.gather(2, label)
    losses = -picked.squeeze(2).mean(1)
    grad = logp.exp_().scatter_(2, label, picked.exp() - 1).div_(n)
    return losses, grad


class StackedMLP(nn.Module):
    """K MLPs of the same widths and the same kind of layer at each depth (dense, or
    factorized at ranks <= ``rank``): one stacked layer per layer of the MLP, ReLU between
    them."""

    def __init__(self, models: list[MLP], rank: int | None = None):
        super().__init__()
        if not models:
            raise ValueError("a stack needs at least one model")
        kinds = {tuple(isinstance(l, nn.Linear) for l in m.linear_layers()) for m in models}
        widths = {m.widths for m in models}
        if len(kinds) > 1 or len(widths) > 1:
            raise ValueError("a stack holds models with one kind of layer at each depth and "
                             f"one widths; got methods {sorted({m.method for m in models})} and "
                             f"widths {sorted(widths)}; use plan_stacks() to split them")
        self.dense_layers, self.widths = kinds.pop(), widths.pop()
        self.dense = all(self.dense_layers)
        self.K = len(models)
        self.methods = [m.method for m in models]
        self.ranks = [m.rank for m in models]
        self.rank = None if self.dense else (rank or max(self.ranks))
        if not self.dense and max(self.ranks) > self.rank:
            raise ValueError(f"stack rank {self.rank} is below model rank {max(self.ranks)}")
        per_layer = zip(*(m.linear_layers() for m in models))
        self.layers = nn.ModuleList(
            StackedDense(list(ls), shared_input=l == 0) if dense
            else StackedLowRank(list(ls), self.rank, shared_input=l == 0)
            for l, (ls, dense) in enumerate(zip(per_layer, self.dense_layers)))

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (K, N, classes) of all K models for the shared input x (N, ...)."""
        h = x.flatten(1)                                                     # (N, d_in)
        for l, layer in enumerate(self.layers):
            h = layer(F.relu(h) if l else h)                                 # (K, N, d_out)
        return h

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of each model on the batch: (K,)."""
        logits = self.forward(x)                                            # (K, N, C)
        return F.cross_entropy(logits.transpose(1, 2), y.expand(self.K, -1),
                               reduction="none").mean(1)

    @torch.no_grad()
    def written_step(self, x: torch.Tensor, y: torch.Tensor, rule) -> torch.Tensor:
        """One step on every model's mean cross-entropy with the backward pass written out
        layer by layer, each gradient handed to ``rule`` (:class:`SGDRule`,
        :class:`MomentumRule`, :class:`GradRule`); returns the models' losses before the step,
        (K,)."""
        h, inputs, saved = x.flatten(1), [], []
        for l, layer in enumerate(self.layers):
            h = F.relu(h) if l else h
            inputs.append(h)                                                 # the layer's input
            h, ctx = layer.forward_saving(h)
            saved.append(ctx)
        losses, grad = cross_entropy_with_grad(h, y)                         # ∂L/∂logits
        for l in reversed(range(self.n_layers)):
            down = self.layers[l].backward(inputs[l], saved[l], grad, rule)
            if l:  # through the ReLU: the gradient passes where its output was positive
                grad = torch.ops.aten.threshold_backward(down, inputs[l], 0.0)
        return losses

    def sgd_step(self, x: torch.Tensor, y: torch.Tensor, lr: float,
                 weight_decay: float = 0.0) -> torch.Tensor:
        """One step of plain SGD (no momentum), written out: the same step as
        ``losses(x, y).sum().backward()`` then ``torch.optim.SGD(lr=lr,
        weight_decay=weight_decay).step()``, up to rounding."""
        return self.written_step(x, y, SGDRule(lr, weight_decay))

    @torch.no_grad()
    def unstack(self) -> list[MLP]:
        """The K models as separate MLPs with their own ranks (padding dropped); the global
        random generator is left as it was."""
        models = []
        with torch.random.fork_rng(devices=[]):
            for k, (method, rank) in enumerate(zip(self.methods, self.ranks)):
                m = MLP(method, rank, widths=self.widths)
                ref = self.layers[0].bias
                m.to(device=ref.device, dtype=ref.dtype)
                for layer, stacked in zip(m.linear_layers(), self.layers):
                    stacked.unstack_into(k, layer)
                models.append(m)
        return models
