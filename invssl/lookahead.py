"""Loss weights learned during training by a one-step look-ahead (docs/method.md, "Learned weights").

After the step ``w' = w - lr * grad_w L(w; alpha, beta)``, alpha and beta move along
``-grad CE(w')``, the labeled cross-entropy at the updated weights. L is linear in its weights,
so the derivative of ``w'`` with respect to them is a combination of the terms' own gradients:

    dCE(w')/dalpha = -lr * <v, g_ce - beta * g_R - (1 - beta) * g_E>
    dCE(w')/dbeta  = -lr * (1 - alpha) * <v, g_R - g_E>          v = grad CE at w'

One backward per term gives the step's gradient and these inner products; one forward/backward
of a labeled batch at ``w'`` (``torch.func.functional_call``) gives ``v``. Nothing is
differentiated through a backward pass, so the reconstruction's double backward is not
differentiated again. Each weight is the sigmoid of a logit moved by Adam, so it stays in (0, 1)
and its step size does not depend on the scale of the hypergradient.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from invssl.inversion import LossTerms
from invssl.schedules import Learned, make_schedule

Grads = tuple[Tensor, ...]  # one tensor per parameter, in ``model.parameters()`` order


class TermGrads(NamedTuple):
    ce: Grads
    recon: Grads
    entropy: Grads


def term_gradients(terms: LossTerms, params: list[Tensor]) -> TermGrads:
    """The gradient of each loss term alone; a term that was not computed has zero gradient."""
    out = []
    for term in (terms.ce, terms.recon, terms.entropy):
        if term.requires_grad:
            grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        else:
            grads = (None,) * len(params)
        out.append(tuple(torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)))
    return TermGrads(*out)


def combine(g: TermGrads, alpha: float, beta: float) -> Grads:
    """grad_w L = alpha*g_ce + (1-alpha)*(beta*g_R + (1-beta)*g_E)."""
    return tuple(alpha * c + (1 - alpha) * (beta * r + (1 - beta) * e) for c, r, e in zip(g.ce, g.recon, g.entropy))


def hypergradient(
    model: nn.Module, g: TermGrads, alpha: float, beta: float, lr: float, x_labeled: Tensor, y_labeled: Tensor
) -> tuple[float, float]:
    """(dCE(w')/dalpha, dCE(w')/dbeta) for ``w' = w - lr * combine(g, alpha, beta)``.

    ``x_labeled``: (B, *S), ``y_labeled``: (B,). Buffers are passed as copies, so the look-ahead
    forward leaves running statistics (batch norm) as they were.
    """
    names = [name for name, _ in model.named_parameters()]
    step = combine(g, alpha, beta)
    ahead = {name: (p - lr * s).detach().requires_grad_() for (name, p), s in zip(model.named_parameters(), step)}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    logits = functional_call(model, {**ahead, **buffers}, (x_labeled,))  # (B, K)
    v = torch.autograd.grad(F.cross_entropy(logits.float(), y_labeled), [ahead[n] for n in names], allow_unused=True)

    def dot(grads: Grads) -> float:
        return sum(float((a * b).sum()) for a, b in zip(v, grads) if a is not None)

    v_ce, v_r, v_e = dot(g.ce), dot(g.recon), dot(g.entropy)
    return -lr * (v_ce - beta * v_r - (1 - beta) * v_e), -lr * (1 - alpha) * (v_r - v_e)


class Weights:
    """alpha(t) and beta(t) of one job: schedules, or learned logits with their optimiser."""

    def __init__(self, alpha: Union[float, object], beta: Union[float, object]) -> None:
        self.specs = (make_schedule(alpha), make_schedule(beta))  # type: ignore[arg-type]
        self.learned = tuple(isinstance(s, Learned) for s in self.specs)
        self.logits = [
            torch.tensor(_logit(s.init) if learned else 0.0, dtype=torch.float64, requires_grad=True)
            for s, learned in zip(self.specs, self.learned)
        ]
        groups = [{"params": [lg], "lr": s.lr} for lg, s in zip(self.logits, self.specs) if isinstance(s, Learned)]
        self.opt = torch.optim.Adam(groups) if groups else None

    @property
    def any_learned(self) -> bool:
        return self.opt is not None

    def at(self, t: float) -> tuple[float, float]:
        """The weights in force at time ``t`` (epochs)."""
        a, b = (
            torch.sigmoid(lg.detach()).item() if learned else spec(t)
            for lg, learned, spec in zip(self.logits, self.learned, self.specs)
        )
        return a, b

    def update(self, d_alpha: float, d_beta: float) -> None:
        """One Adam step of the learned logits along the hypergradient (chain rule through the
        sigmoid: dw/dlogit = w * (1 - w))."""
        assert self.opt is not None
        for lg, d, learned in zip(self.logits, (d_alpha, d_beta), self.learned):
            if not learned:
                continue
            w = torch.sigmoid(lg.detach())
            lg.grad = (d * w * (1 - w)).reshape(())
        self.opt.step()

    def state_dict(self) -> dict[str, object]:
        return {
            "logits": torch.stack([lg.detach() for lg in self.logits]),
            "opt": self.opt.state_dict() if self.opt else {},
        }

    def load_state_dict(self, blob: dict[str, object]) -> None:
        with torch.no_grad():
            for lg, value in zip(self.logits, blob["logits"]):  # type: ignore[call-overload]
                lg.copy_(value)
        if self.opt is not None:
            self.opt.load_state_dict(blob["opt"])  # type: ignore[arg-type]


def learned_step(
    model: nn.Module,
    terms: LossTerms,
    weights: Weights,
    alpha: float,
    beta: float,
    lr: float,
    x_ahead: Tensor,
    y_ahead: Tensor,
) -> None:
    """Fill ``.grad`` of the model's parameters with the step's gradient, then move the learned
    weights along the look-ahead hypergradient measured on the labeled batch ``x_ahead``."""
    params = list(model.parameters())
    g = term_gradients(terms, params)
    for p, s in zip(params, combine(g, alpha, beta)):
        p.grad = s
    weights.update(*hypergradient(model, g, alpha, beta, lr, x_ahead, y_ahead))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))
