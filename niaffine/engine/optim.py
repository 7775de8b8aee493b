# SPDX-License-Identifier: Apache-2.0
"""The optimisation loop: one small object per pyramid level, with convergence tests.

The default optimiser is L-BFGS with a backtracking line search over the scaled parameters
(see :mod:`niaffine.engine.params`): every parameter is in millimetres of displacement, so the
convergence test is physical: a level stops when an iteration moves no parameter by more than
``tolerance_mm`` or the metric stops changing. Any other :class:`torch.optim.Optimizer` class can
be used instead; it then stops when the relative change of the metric over a window of
iterations falls below ``tolerance`` (ANTs' convergence test).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import RegistrationError

LOGGER = logging.getLogger(__name__)


@dataclass
class OptimisationReport:
    """What one optimisation run did.

    Attributes
    ----------
    iterations : int
        Optimiser iterations (for L-BFGS: line-search iterations, not function evaluations).
    evaluations : int
        Metric evaluations.
    converged : bool
        Whether a convergence test stopped the run (rather than the iteration cap).
    loss : (B,) tensor
        Final loss per batch item.
    """

    iterations: int
    evaluations: int
    converged: bool
    loss: torch.Tensor


class Optimiser:
    """Minimise a batched loss over a list of parameters.

    Parameters
    ----------
    params : list of torch.nn.Parameter
    optimizer : "lbfgs" or a torch.optim.Optimizer subclass
    optimizer_kwargs : dict, optional
        Extra arguments for the optimizer class (``lr`` is required for most first-order ones).
    max_iterations : int
    tolerance_mm : float
        L-BFGS: smallest parameter step (mm) or metric change that still counts as progress.
    tolerance : float
        Other optimisers: relative metric change over ``window`` iterations.
    window : int
    max_step_mm : float, optional
        L-BFGS trust radius: no parameter moves by more than this (mm) in one iteration, so
        a line search cannot leap into a degenerate far-away transform.
    callback : callable, optional
        Called as ``callback(iteration, loss)`` after each iteration (loss is the batch sum).
    """

    def __init__(self, params, *, optimizer="lbfgs", optimizer_kwargs=None, max_iterations=100,
                 tolerance_mm=1e-3, tolerance=1e-6, window=10, max_step_mm=None, callback=None):
        self.params = list(params)
        self.optimizer = optimizer
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.max_iterations = int(max_iterations)
        self.tolerance_mm = float(tolerance_mm)
        self.tolerance = float(tolerance)
        self.window = int(window)
        self.max_step_mm = max_step_mm
        self.callback = callback

    def run(self, loss_fn: Callable[[], torch.Tensor]) -> OptimisationReport:
        """Minimise ``loss_fn() -> (B,)`` and return a report; parameters are updated in place."""
        if not self.params:
            with torch.no_grad():
                loss = loss_fn()
            return OptimisationReport(0, 1, True, loss.detach())
        if self.optimizer == "lbfgs":
            return self._run_lbfgs(loss_fn)
        return self._run_first_order(loss_fn)

    def _guarded(self, loss_fn, counter: list, best: dict):
        """Closure that counts evaluations and keeps the best finite parameters seen."""

        def closure():
            self._zero_grad()
            loss = loss_fn()
            counter[0] += 1
            total = loss.sum()
            if not torch.isfinite(total):
                raise _NonFinite()
            total.backward()
            value = float(total.detach())
            if value < best["value"]:
                best["value"] = value
                best["loss"] = loss.detach().clone()
                best["params"] = [p.detach().clone() for p in self.params]
            return total

        return closure

    def _zero_grad(self):
        for p in self.params:
            if p.grad is not None:
                p.grad.zero_()

    def _restore(self, best: dict):
        with torch.no_grad():
            for p, value in zip(self.params, best["params"]):
                p.copy_(value)

    def _run_lbfgs(self, loss_fn) -> OptimisationReport:
        """Limited-memory BFGS (two-loop recursion) with a backtracking Armijo line search.

        Written here rather than through :class:`torch.optim.LBFGS`: the first construction of
        any ``torch.optim`` optimizer imports ``torch._dynamo`` (about a second), which would
        dominate a registration that takes a few seconds.
        """
        counter, best = [0], {"value": math.inf, "params": None, "loss": None}
        closure = self._guarded(loss_fn, counter, best)
        history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        iterations, converged = 0, False
        try:
            value = float(closure().detach())
            grad = self._flat_grad()
            for iterations in range(1, self.max_iterations + 1):
                direction = _two_loop(grad, history)
                slope = float(direction @ grad)
                if slope >= 0:  # not a descent direction: restart from steepest descent
                    history.clear()
                    direction, slope = -grad, -float(grad @ grad)
                step = 1.0 if history else min(1.0, 1.0 / max(float(grad.abs().sum()), 1e-12))
                if self.max_step_mm is not None:
                    step = min(step, self.max_step_mm / max(float(direction.abs().max()), 1e-12))
                start = self._flat_params()
                for _ in range(20):
                    self._set_params(start + step * direction)
                    new_value = float(closure().detach())
                    if new_value <= value + 1e-4 * step * slope:
                        break
                    step *= 0.5
                else:
                    self._set_params(start)
                    converged = True
                    break
                new_grad = self._flat_grad()
                s_k, y_k = step * direction, new_grad - grad
                curvature = float(s_k @ y_k)
                if curvature > 1e-10:
                    history.append((s_k, y_k, 1.0 / curvature))
                    del history[:-10]
                moved = float(s_k.abs().max())
                change = abs(value - new_value)
                value, grad = new_value, new_grad
                if self.callback is not None:
                    self.callback(iterations, value)
                if moved < self.tolerance_mm or change < self.tolerance * max(abs(value), 1.0):
                    converged = True
                    break
        except _NonFinite:
            LOGGER.warning("the metric became NaN/Inf; keeping the best parameters seen")
        if best["params"] is None:
            raise RegistrationError("the metric is NaN or infinite at the initial transform")
        self._restore(best)
        return OptimisationReport(iterations, counter[0], converged, best["loss"])

    def _flat_params(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def _flat_grad(self) -> torch.Tensor:
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in self.params]).clone()

    def _set_params(self, flat: torch.Tensor) -> None:
        offset = 0
        with torch.no_grad():
            for p in self.params:
                n = p.numel()
                p.copy_(flat[offset:offset + n].reshape(p.shape))
                offset += n

    def _run_first_order(self, loss_fn) -> OptimisationReport:
        opt = self.optimizer(self.params, **self.optimizer_kwargs)
        counter, best = [0], {"value": math.inf, "params": None, "loss": None}
        closure = self._guarded(loss_fn, counter, best)
        history, converged, iteration = [], False, 0
        for iteration in range(1, self.max_iterations + 1):
            try:
                value = float(opt.step(closure).detach())
            except _NonFinite:
                LOGGER.warning("the metric became NaN/Inf; keeping the best parameters seen")
                break
            history.append(value)
            if self.callback is not None:
                self.callback(iteration, value)
            if len(history) > self.window:
                old = history[-self.window - 1]
                if abs(old - value) <= self.tolerance * max(abs(old), 1e-12):
                    converged = True
                    break
        if best["params"] is None:
            raise RegistrationError("the metric is NaN or infinite at the initial transform")
        self._restore(best)
        return OptimisationReport(iteration, counter[0], converged, best["loss"])


def _two_loop(grad: torch.Tensor, history) -> torch.Tensor:
    """L-BFGS search direction ``-H grad`` from the (s, y, 1 / y.s) history."""
    q = grad.clone()
    alphas = []
    for s_k, y_k, rho in reversed(history):
        alpha = rho * float(s_k @ q)
        q -= alpha * y_k
        alphas.append(alpha)
    if history:
        s_k, y_k, _ = history[-1]
        q *= float(s_k @ y_k) / float(y_k @ y_k)
    for (s_k, y_k, rho), alpha in zip(history, reversed(alphas)):
        beta = rho * float(y_k @ q)
        q += (alpha - beta) * s_k
    return -q


class _NonFinite(Exception):
    """Raised inside a closure when the loss is NaN or infinite."""
