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
from dataclasses import dataclass, field

import torch

from ..errors import RegistrationError

LOGGER = logging.getLogger(__name__)

#: Steepest-descent steps in a row (no L-BFGS history) that the convergence tests skip.
BLIND_STEPS = 3
#: A rejected trial step shrinks to at least this fraction of itself (and at most half).
SHRINK_MIN = 0.25


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
    item_iterations, item_evaluations, item_converged : list, optional
        The same per batch item, where items are optimised separately (L-BFGS).
    """

    iterations: int
    evaluations: int
    converged: bool
    loss: torch.Tensor
    item_iterations: list[int] | None = None
    item_evaluations: list[int] | None = None
    item_converged: list[bool] | None = None

    def then(self, later: OptimisationReport) -> OptimisationReport:
        """The report of this run followed by ``later`` on the same items (counts add up)."""

        def add(a, b):
            if a is None or b is None:
                return None
            return [x + y for x, y in zip(a, b)]

        return OptimisationReport(
            self.iterations + later.iterations, self.evaluations + later.evaluations,
            later.converged, later.loss, add(self.item_iterations, later.item_iterations),
            add(self.item_evaluations, later.item_evaluations), later.item_converged)

    def for_item(self, b: int) -> tuple[int, int, bool]:
        """``(iterations, evaluations, converged)`` of batch item ``b``."""
        if self.item_iterations is None:
            return self.iterations, self.evaluations, self.converged
        return self.item_iterations[b], self.item_evaluations[b], self.item_converged[b]


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
    partial : bool
        L-BFGS: the loss can be evaluated for some batch items only, as ``loss_fn(items)`` (a
        list of item indices) returning their ``(len(items),)`` losses. Items that have
        converged, or whose line search has already accepted a step, are then left out of
        further evaluations, so a batch costs about what its items cost one by one.
    """

    def __init__(self, params, *, optimizer="lbfgs", optimizer_kwargs=None, max_iterations=100,
                 tolerance_mm=1e-3, tolerance=1e-6, window=10, max_step_mm=None, callback=None,
                 partial=False):
        self.params = list(params)
        self.optimizer = optimizer
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.max_iterations = int(max_iterations)
        self.tolerance_mm = float(tolerance_mm)
        self.tolerance = float(tolerance)
        self.window = int(window)
        self.max_step_mm = max_step_mm
        self.callback = callback
        self.partial = bool(partial)

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

        Every batch item is optimised on its own: its own L-BFGS history, step length, trust
        radius, convergence test and best-seen parameters. All items are evaluated together
        (one batched metric evaluation per trial step), but an item's path does not depend on
        the other items of the batch, so a subject registered in a batch gets the result it
        gets alone. Items that have converged stay where they are while the others go on.
        The line search shrinks the step (:func:`_backtrack`) until the Armijo condition holds;
        an item whose step has shrunk below ``tolerance_mm`` (the largest parameter change) has
        converged. The step and metric-change tests apply to steps taken along an L-BFGS
        direction, not to the scaled steepest-descent step that starts a run or a restart.

        Written here rather than through :class:`torch.optim.LBFGS`: the first construction of
        any ``torch.optim`` optimizer imports ``torch._dynamo`` (about a second), which would
        dominate a registration that takes a few seconds.
        """
        evaluate = _ItemEvaluator(self.params, loss_fn, partial=self.partial)
        batch = evaluate.batch
        state = [_ItemState() for _ in range(batch)]
        values, grads = evaluate(evaluate.get())
        for b in range(batch):
            state[b].evaluations = 1
            if not math.isfinite(values[b]):
                raise RegistrationError("the metric is NaN or infinite at the initial transform")
        best_values, best_x = values.clone(), evaluate.get()
        iteration = 0
        for iteration in range(1, self.max_iterations + 1):
            active = [b for b in range(batch) if not state[b].done]
            if not active:
                break
            x = evaluate.get()
            start = x.clone()
            direction = torch.zeros_like(x)
            step = torch.zeros(batch, dtype=x.dtype)
            slope = torch.zeros(batch, dtype=x.dtype)
            # The convergence tests judge steps that the L-BFGS history shaped: the first step
            # of a run (or of a restart) is a steepest-descent step scaled by the gradient's
            # size, often a few hundredths of a millimetre, whose small move and small gain
            # say nothing about how far the optimum is; nor do the next few while the steps
            # are too small for their curvature to enter the history. After BLIND_STEPS such
            # steps in a row the tests apply again (no curvature is learnt at an exact optimum).
            judged = {}
            for b in active:
                direction[b], slope[b], step[b] = self._direction(grads[b], state[b].history)
                state[b].blind = 0 if state[b].history else state[b].blind + 1
                judged[b] = not 0 < state[b].blind <= BLIND_STEPS
            pending, stalled = set(active), set()
            reach = {b: float(direction[b].abs().max()) for b in active}
            trial_values, trial_grads = values.clone(), grads.clone()
            for _ in range(20):
                for b in pending:
                    x[b] = start[b] + step[b] * direction[b]
                new_values, new_grads = evaluate(x, sorted(pending))
                for b in list(pending):
                    state[b].evaluations += 1
                    value = float(new_values[b])
                    if not math.isfinite(value):
                        LOGGER.warning("the metric became NaN/Inf; keeping the best parameters seen")
                        x[b] = best_x[b]
                        state[b].done = True
                        pending.discard(b)
                        continue
                    if value < best_values[b]:
                        best_values[b], best_x[b] = value, x[b]
                    if value <= values[b] + 1e-4 * step[b] * slope[b]:
                        trial_values[b], trial_grads[b] = value, new_grads[b]
                        pending.discard(b)
                    else:
                        step[b] = _backtrack(step[b], value - values[b], slope[b])
                        # a step that would move nothing by tolerance_mm is not worth trying
                        if step[b] * reach[b] < self.tolerance_mm:
                            pending.discard(b)
                            stalled.add(b)
                if not pending:
                    break
            for b in pending | stalled:  # no acceptable step: this item has converged
                x[b] = start[b]
                state[b].done = state[b].converged = True
            for b in active:
                if state[b].done:
                    continue
                state[b].iterations = iteration
                s_k = step[b] * direction[b]
                y_k = trial_grads[b] - grads[b]
                curvature = float(s_k @ y_k)
                if curvature > 1e-10:
                    state[b].history.append((s_k, y_k, 1.0 / curvature))
                    del state[b].history[:-10]
                change = abs(float(values[b]) - float(trial_values[b]))
                if judged[b] and (
                        float(s_k.abs().max()) < self.tolerance_mm
                        or change < self.tolerance * max(abs(float(trial_values[b])), 1.0)):
                    state[b].done = state[b].converged = True
            values, grads = trial_values, trial_grads
            evaluate.set(x)
            if self.callback is not None and any(state[b].iterations == iteration for b in active):
                self.callback(iteration, float(values.sum()))
        evaluate.set(best_x)
        return OptimisationReport(
            max(s.iterations for s in state), evaluate.count, all(s.converged for s in state),
            best_values.to(evaluate.loss_device, evaluate.loss_dtype),
            item_iterations=[s.iterations for s in state],
            item_evaluations=[s.evaluations for s in state],
            item_converged=[s.converged for s in state],
        )

    def _direction(self, grad: torch.Tensor, history: list) -> tuple:
        """Search direction, its slope and the first trial step of one item."""
        direction = _two_loop(grad, history)
        slope = float(direction @ grad)
        if slope >= 0:  # not a descent direction: restart from steepest descent
            history.clear()
            direction, slope = -grad, -float(grad @ grad)
        step = 1.0 if history else min(1.0, 1.0 / max(float(grad.abs().sum()), 1e-12))
        if self.max_step_mm is not None:
            step = min(step, self.max_step_mm / max(float(direction.abs().max()), 1e-12))
        return direction, slope, step

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


def _backtrack(step, rise, slope) -> float:
    """The next trial step after ``step`` failed the Armijo test.

    The minimiser of the parabola through the start (value and ``slope``) and the rejected
    trial (``rise`` above the start), kept within ``[SHRINK_MIN, 0.5] * step`` (safeguarded
    backtracking, as in Nocedal & Wright). Far past the minimum, or where the metric is flat
    and noisy near convergence, this shrinks the step fourfold where halving takes two
    trials. A tenfold floor was tried: it gave up too early on a rough coarse level (a
    half-brain moving mask ended 28 mm off).

    >>> _backtrack(1.0, 0.0, -1.0)  # f(1) = f(0): the parabola's minimum is at 0.5
    0.5
    >>> _backtrack(1.0, 9.0, -1.0)  # far past it
    0.25
    """
    curvature = float(rise) - float(slope) * float(step)
    if not curvature > 0:
        return 0.5 * float(step)
    best = -float(slope) * float(step) ** 2 / (2.0 * curvature)
    return min(max(best, SHRINK_MIN * float(step)), 0.5 * float(step))


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


@dataclass
class _ItemState:
    """L-BFGS state of one batch item."""

    history: list = field(default_factory=list)
    iterations: int = 0
    evaluations: int = 0
    converged: bool = False
    done: bool = False
    blind: int = 0  # consecutive steps taken without L-BFGS history


class _ItemEvaluator:
    """Evaluate a batched loss and its per-item gradients at per-item flat parameters.

    Parameters are handled as one ``(B, P)`` float64 CPU array (``P`` the optimised values of
    one item, a dozen at most); the loss is evaluated on the parameters' own device.
    """

    def __init__(self, params, loss_fn, *, partial: bool = False):
        self.params, self.loss_fn, self.partial = params, loss_fn, partial
        self.batch = int(params[0].shape[0])
        self.sizes = [p[0].numel() for p in params]
        self.count = 0
        self.loss_device, self.loss_dtype = torch.device("cpu"), torch.float64

    def get(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(self.batch, -1) for p in self.params], 1).cpu().double()

    def set(self, flat: torch.Tensor) -> None:
        with torch.no_grad():
            for p, part in zip(self.params, flat.split(self.sizes, dim=1)):
                p.copy_(part.reshape(p.shape).to(p.device, p.dtype))

    def __call__(self, flat: torch.Tensor, items=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss (B,), grad (B, P))`` at ``flat``; a non-finite item gets no gradient.

        With ``items`` (and ``partial``) only those items are evaluated; the others read as
        ``inf`` with zero gradients and must not be used.
        """
        self.set(flat)
        for p in self.params:
            p.grad = None
        subset = self.partial and items is not None and len(items) < self.batch
        loss = self.loss_fn(list(items)) if subset else self.loss_fn()
        self.count += 1
        self.loss_device, self.loss_dtype = loss.device, loss.dtype
        finite = torch.isfinite(loss)
        torch.where(finite, loss, torch.zeros_like(loss)).sum().backward()
        grads = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(self.batch, -1)
                           for p in self.params], 1).cpu().double()
        if subset:
            values = torch.full((self.batch,), math.inf, dtype=torch.float64)
            values[list(items)] = loss.detach().cpu().double()
        else:
            values = loss.detach().cpu().double()
        # a NaN gradient is as unusable as a NaN value
        values[~torch.isfinite(grads).all(1)] = math.nan
        return values, grads


class _NonFinite(Exception):
    """Raised inside a closure when the loss is NaN or infinite."""
