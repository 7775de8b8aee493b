# SPDX-License-Identifier: Apache-2.0
"""The L-BFGS loop optimises every batch item on its own."""

from __future__ import annotations

import math

import pytest
import torch

from niaffine.engine.optim import Optimiser

#: Per-item quadratic bowls with different curvatures, minima and starting points.
CURVATURES = [(1.0, 4.0, 0.5), (30.0, 0.2, 2.0), (3.0, 3.0, 3.0)]
MINIMA = [(5.0, -2.0, 1.0), (-7.0, 0.5, 0.0), (0.1, 0.1, -0.1)]


def _problem(items: list[int], calls: list | None = None):
    """Parameters (B, 3) at zero and a loss ``(B,)``: a coupled quartic bowl per item.

    The loss takes an optional list of batch items and then returns theirs only (recorded
    in ``calls``).
    """
    param = torch.nn.Parameter(torch.zeros(len(items), 3, dtype=torch.float64))
    curv = torch.tensor([CURVATURES[i] for i in items], dtype=torch.float64)
    minima = torch.tensor([MINIMA[i] for i in items], dtype=torch.float64)

    def loss(subset=None):
        index = list(range(len(items))) if subset is None else list(subset)
        if calls is not None:
            calls.append(index)
        d = param[index] - minima[index]
        coupled = 0.3 * d[:, 0] * d[:, 1]
        return (curv[index] * d**2).sum(-1) + coupled + 0.05 * (d**4).sum(-1)

    return param, loss


def _run(items: list[int], **options):
    param, loss = _problem(items)
    report = Optimiser([param], **options).run(loss)
    return param.detach(), report


@pytest.mark.parametrize("options", [{}, {"max_step_mm": 0.5}, {"max_iterations": 3}],
                         ids=["default", "trust-radius", "capped"])
def test_batch_items_follow_their_own_path(options):
    """Same parameters, iterations and convergence in a batch as alone (float64 loss)."""
    batch, report = _run([0, 1, 2], **options)
    for b in range(3):
        alone, single = _run([b], **options)
        torch.testing.assert_close(batch[b], alone[0], rtol=0, atol=1e-12)
        assert report.for_item(b) == single.for_item(0)
        assert math.isclose(float(report.loss[b]), float(single.loss[0]), abs_tol=1e-12)
    assert report.iterations == max(report.item_iterations)


def test_partial_evaluation_skips_settled_items():
    """With ``partial``, converged items and items whose step was accepted are not evaluated
    again: the same path, and each item evaluated as often as alone."""
    calls = []
    param, loss = _problem([0, 1, 2], calls)
    report = Optimiser([param], partial=True).run(loss)
    full, full_report = _run([0, 1, 2])
    torch.testing.assert_close(param.detach(), full, rtol=0, atol=1e-12)
    assert report.item_iterations == full_report.item_iterations
    assert any(len(c) < 3 for c in calls)
    for b in range(3):
        assert sum(b in c for c in calls) == report.item_evaluations[b]
        assert report.item_evaluations[b] == _run([b])[1].item_evaluations[0]


def test_a_converged_item_stays_put_while_others_go_on():
    """The easy bowl converges first; the ill-conditioned one keeps iterating."""
    batch, report = _run([2, 1], tolerance_mm=1e-9, tolerance=0.0)
    iterations = report.item_iterations
    assert all(report.item_converged)
    assert iterations[0] < iterations[1]
    torch.testing.assert_close(batch, torch.tensor([MINIMA[2], MINIMA[1]], dtype=torch.float64),
                               atol=1e-4, rtol=0)


def test_a_nan_in_one_item_leaves_the_others_alone():
    """An item whose loss turns NaN keeps its best parameters; the others go on as alone."""

    def run(items):
        param, loss = _problem(items)

        def nan_beyond_two():  # item 0 aims at x = 5 but is NaN beyond x = 2
            return loss() + torch.sqrt(2.0 - param[:, 0])

        return param.detach(), Optimiser([param]).run(nan_beyond_two)

    batch, report = run([0, 1])
    alone, single = run([1])
    assert float(batch[0, 0]) <= 2.0 and math.isfinite(float(report.loss[0]))
    assert not report.item_converged[0]
    torch.testing.assert_close(batch[1], alone[0], rtol=0, atol=1e-12)
    assert report.for_item(1) == single.for_item(0) and single.converged


def test_line_search_gives_up_below_the_tolerance():
    """At a kink (|x| just off its minimum) every trial step overshoots: an item stops shrinking
    its step once the step would move no parameter by ``tolerance_mm``, and has converged,
    instead of spending all 20 trials of the line search."""

    def run(tolerance_mm):
        param = torch.nn.Parameter(torch.full((2, 1), 1e-9, dtype=torch.float64))
        report = Optimiser([param], tolerance_mm=tolerance_mm, tolerance=0.0).run(
            lambda: param.abs().sum(-1))
        return report, param.detach()

    (stopped, at), (exhausted, _) = run(1e-3), run(1e-12)
    assert all(stopped.item_converged) and all(exhausted.item_converged)
    # past the kink the parabola through f(0), f'(0) and the trial puts every next step at a
    # quarter of the last: trial steps 1, 1/4, ... 1/256 mm fail; 1/1024 is below 1e-3 mm and
    # is not tried (halving would have tried 10)
    assert stopped.item_evaluations == [6, 6]
    # without the tolerance it goes on shrinking for all 20 trials of the first line search
    # (and once a step is shorter than the 1e-9 to the kink, it is accepted and goes on)
    assert min(exhausted.item_evaluations) >= 21
    torch.testing.assert_close(at, torch.full((2, 1), 1e-9, dtype=torch.float64))


def test_backtracking_steps_to_the_parabola_minimum_within_safeguards():
    """After a failed trial the next step is the minimum of the parabola through the start
    (value and slope) and the trial, kept within [0.25, 0.5] of the failed step."""
    from niaffine.engine.optim import _backtrack

    # f(a) = (a - 0.3)**2 from a = 0: slope -0.6; the trial a = 1 rises 0.4 above f(0) = 0.09
    assert _backtrack(1.0, 0.49 - 0.09, -0.6) == pytest.approx(0.3)
    assert _backtrack(1.0, 100.0, -0.6) == pytest.approx(0.25)  # far past the minimum
    assert _backtrack(1.0, -0.5, -1.0) == pytest.approx(0.5)    # no rise: halve
    assert _backtrack(2.0, float("nan"), -1.0) == pytest.approx(1.0)


def test_a_small_first_step_does_not_end_the_run():
    """A shallow metric (gradients of hundredths per mm, as mutual information has) makes the
    first steepest-descent step move a few hundredths of a millimetre. The tolerances judge
    L-BFGS steps: the run goes on to the minimum 10 mm away, where ending at the first step
    would stay at the start."""
    param = torch.nn.Parameter(torch.zeros(1, 3, dtype=torch.float64))
    target = torch.tensor([[10.0, -4.0, 2.0]], dtype=torch.float64)

    def loss(subset=None):
        return 1e-3 * ((param - target) ** 2).sum(-1)

    report = Optimiser([param], tolerance_mm=0.05, tolerance=1e-4).run(loss)
    torch.testing.assert_close(param.detach(), target, rtol=0, atol=0.05)
    assert report.converged


def test_steps_without_history_are_judged_after_a_few():
    """At an exact optimum no curvature is learnt: the run stops after BLIND_STEPS + 1
    iterations instead of running to the cap."""
    from niaffine.engine.optim import BLIND_STEPS

    param = torch.nn.Parameter(torch.ones(1, 2, dtype=torch.float64))

    def loss(subset=None):
        return ((param - 1.0) ** 2).sum(-1)

    report = Optimiser([param], max_iterations=50).run(loss)
    assert report.converged and report.iterations == BLIND_STEPS + 1
