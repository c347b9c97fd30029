"""The stopping rules of the window solvers (FP, FP+, AA, TAA), one class each (docs/METHOD.md sections 4 and 9).

A rule owns everything about itself: the `SolverConfig` options it reads, their validation, the parts of the run
tag they add, the per-step threshold logged beside rho, the test that decides which window positions are accepted
(and u*, the highest position that is not), and which positions take the method's update. Both engines (the
reference loops and the static/CUDA-graph engine) call the same methods, so a rule is written once.

Adding a rule is one subclass of `StopRule` registered with `@register`: its name becomes a valid
`SolverConfig.stop`, a `--stop` choice of the CLI and a value of the study schema (parataa/jobs/config.py
`load_schema` reads `RULES`), its `summary` the words beside its name in their help. If it reads a new option, that
option is a `SolverConfig` field (the rule's `options` names it).

Torch-free at import: the analysis (which never imports torch) reads `RULES`, `TOL_SCALES` and `step_threshold`
here; `fmt_num` writes the numbers of every run tag. The tensor methods import torch when they run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = ["RULES", "TOL_SCALES", "StopRule", "fmt_num", "register", "step_threshold", "target_rms", "tolerance_scale"]

TOL_SCALES = ("sigma", "one", "beta")

RULES: dict[str, StopRule] = {}


def register(cls: type[StopRule]) -> type[StopRule]:
    """Class decorator: make `cls.name` a stopping rule (`SolverConfig.stop`)."""
    if cls.name in RULES:
        raise ValueError(f"stopping rule {cls.name!r} is registered twice")
    RULES[cls.name] = cls()
    return cls


def fmt_num(v: float) -> str:
    """1e-3 -> '1e-3', 0.1 -> '1e-1', 2.5e-4 -> '2.5e-4', 5 -> '5'."""
    if v == 0:
        return "0"
    m, e = f"{float(v):.6e}".split("e")
    m = m.rstrip("0").rstrip(".")
    e = int(e)
    return f"{m}e{e}" if e else m


def step_threshold(abs_tol: float, rel_tol: float, g: Any) -> Any:
    """max(abs_tol, rel_tol g_t) of the per-step rule, for a numpy array or a torch tensor g."""
    return (rel_tol * g).clip(min=abs_tol)


def tolerance_scale(schedule: Any, kind: str) -> Any:
    """g_t [T] of the per-step rule from a `Schedule`: posterior std sigma_t, 1, or the square root of the step's
    beta, sqrt(1 - alphabar^in_t / alphabar^out_t)."""
    if kind == "sigma":
        return schedule.sigma
    if kind == "one":
        return schedule.sigma.new_ones(schedule.sigma.shape)
    return (1 - schedule.alpha_in / schedule.alpha_out).sqrt()


class StopRule:
    """One stopping rule. Subclasses set `name`, `options`, `recountable` and override what differs.

    Tensor arguments of the window methods: rho [N, Wmax] first-order residual RMS of each window position at the
    iterate before the update, valid [N, Wmax] positions in use, lo [N] the window's bottom step, thr [N, Wmax]
    the thresholds of the positions' steps (`thresholds` indexed by step), spent [N] the summed rho of the states
    accepted so far (float64), num_steps T.
    """

    name: ClassVar[str]
    options: ClassVar[tuple[str, ...]]  # the SolverConfig fields this rule reads
    recountable: ClassVar[bool]  # a per-step rule on rho: the analysis may recount steps under another threshold
    summary: ClassVar[str] = ""  # a few words beside the name in the study schema's and the CLI's choice lists
    # after_update reads the precision floor and x_0's previous change; the iteration core computes them every
    # iteration only for a rule that does (or for SolverConfig.floor_freeze)
    reads_floor: ClassVar[bool] = False

    def check(self, config: Any) -> None:
        """Raise ValueError naming the option when the config cannot work with this rule."""

    def tag_parts(self, c: Mapping[str, Any]) -> list[str]:
        """The parts of the run tag this rule's options add (c: the config as a dict)."""
        raise NotImplementedError

    def thresholds(self, config: Any, schedule: Any) -> Any:
        """The per-step threshold [T] logged beside rho."""
        raise NotImplementedError

    def bad(self, config: Any, rho: Any, valid: Any, lo: Any, thr: Any, spent: Any, num_steps: int) -> Any:
        """[N, Wmax] the positions the rule does not accept as they are."""
        raise NotImplementedError

    def test(self, config: Any, rho: Any, valid: Any, lo: Any, thr: Any, spent: Any, num_steps: int) -> tuple[Any, Any]:
        """u* per sample (the highest window position not accepted; -1 when all are) and the accepted mask."""
        import torch

        bad = self.bad(config, rho, valid, lo, thr, spent, num_steps)
        j = torch.arange(rho.shape[1], device=rho.device)
        u_star = torch.where(bad, j[None, :], torch.full_like(bad, -1, dtype=torch.long)).max(dim=1).values
        return u_star, valid & (j[None, :] > u_star[:, None])

    def updated(self, valid: Any, u_star: Any, accepted: Any) -> Any:
        """[N, Wmax] the positions that take the method's update: those below u*."""
        import torch

        j = torch.arange(valid.shape[1], device=valid.device)
        return valid & (j[None, :] < u_star[:, None])

    def after_update(self, config: Any, x_cur: Any, x_new: Any, valid: Any, lo: Any, u_star: Any, accepted: Any,
                     rsum: Any, floor: Any = None, prev_change: Any = None) -> tuple[Any, Any]:
        """(u*, accepted) after the update, from the iterate before it (x_cur) and after it (x_new), [N, Wmax, D],
        rsum [N] the summed rho of the iterate before it (spent plus the window's valid positions), floor [N] (or
        None) the estimated rounding floor of the window's summed rho (`_iteration.rounding_noise`) and prev_change
        [N] (or None without a history) the RMS change the previous iteration made to the window's bottom state
        (+inf where none was stored): a rule that checks the returned iterate accepts here. The default changes
        nothing."""
        return u_star, accepted


@register
class PerStep(StopRule):
    """Rule "step": a position is accepted when its own rho_t <= max(abs_tol, rel_tol g_t) (docs/METHOD.md sec. 4).
    u* is the highest position that is not; accepted states keep their values (their residuals, part of the final
    trajectory's, are the ones just measured), so at the end every state meets the rule or is an exact step from
    the state above it."""

    name = "step"
    options = ("abs_tol", "rel_tol", "tol_scale")
    recountable = True
    summary = "per step"

    def check(self, config: Any) -> None:
        if config.abs_tol == 0 and config.rel_tol == 0:
            raise ValueError("abs_tol and rel_tol are both 0: no step could ever converge; set one of them > 0")

    def tag_parts(self, c: Mapping[str, Any]) -> list[str]:
        parts = [f"tol{fmt_num(c['abs_tol'])}"]
        if c["rel_tol"] != c["abs_tol"]:
            parts.append(f"rtol{fmt_num(c['rel_tol'])}")
        return parts

    def thresholds(self, config: Any, schedule: Any) -> Any:
        return step_threshold(config.abs_tol, config.rel_tol, tolerance_scale(schedule, config.tol_scale))

    def bad(self, config: Any, rho: Any, valid: Any, lo: Any, thr: Any, spent: Any, num_steps: int) -> Any:
        return valid & (rho > thr)


@register
class Summed(StopRule):
    """Rule "sum": the summed first-order residual of the trajectory stays within sum_tol (docs/METHOD.md sec. 9).

    The whole window is accepted at once when the residual already accepted (`spent`) plus the window's rho sum
    stays within the budget of the steps from T down to the window's bottom, sum_tol (T - lo) / T; it then takes
    the method's update once more before it freezes (`updated`: the measured iterate met the budget, the one after
    the update is, where the method contracts, closer still). Otherwise u* is the highest state whose own residual
    exceeds its share sum_tol / T, and the states above it are accepted as measured, but only while the window
    does not reach x_0 (lo > 0): such a window must freeze states to move on. The window that reaches x_0 (every
    window when W = T) is accepted only as a whole: a small residual frozen early can be amplified by expansive
    steps below it (docs/METHOD.md section 9 has the measurements). Either way the accepted residuals add up to at
    most sum_tol. x_{u*} always takes the exact step (residual 0). The logged threshold is the share sum_tol / T.

    With freeze_frac > 0 any window also accepts, as measured, its longest prefix from the top whose rho, added to
    `spent`, stays within freeze_frac sum_tol pro rata of the steps it freezes (`frozen_prefix`), and moves on below
    it: fewer states are evaluated, and what is frozen that way spends at most freeze_frac of the budget.
    """

    name = "sum"
    options = ("sum_tol", "freeze_frac")
    recountable = False
    summary = "summed residual"

    def check(self, config: Any) -> None:
        if config.sum_tol == 0:
            raise ValueError("sum_tol must be > 0 with stop='sum': no trajectory could ever converge")

    def tag_parts(self, c: Mapping[str, Any]) -> list[str]:
        parts = [f"sum{fmt_num(c['sum_tol'])}"]
        if c.get("freeze_frac", 0.0):
            parts.append(f"frz{fmt_num(c['freeze_frac'])}")
        return parts

    def thresholds(self, config: Any, schedule: Any) -> Any:
        import torch

        return torch.full_like(schedule.sigma, config.sum_tol / schedule.num_steps)

    def bad(self, config: Any, rho: Any, valid: Any, lo: Any, thr: Any, spent: Any, num_steps: int) -> Any:
        import torch

        total = spent + torch.where(valid, rho, torch.zeros_like(rho)).sum(dim=1)
        whole = total <= config.sum_tol * (num_steps - lo).to(rho.dtype) / num_steps
        # a window that does not reach x_0 must freeze states to move on: those within their share of the budget
        moving = (lo > 0)[:, None] & (rho <= config.sum_tol / num_steps)
        bad = valid & ~whole[:, None] & ~moving
        if config.freeze_frac > 0:
            bad = bad & ~self.frozen_prefix(config, rho, valid, lo, spent, num_steps)
        return bad

    @staticmethod
    def frozen_prefix(config: Any, rho: Any, valid: Any, lo: Any, spent: Any, num_steps: int) -> Any:
        """[N, Wmax] the longest prefix of the window from its top down to position j whose rho, added to what was
        accepted before, stays within freeze_frac of the budget pro rata of the steps then frozen:
        spent + sum_{s >= j} rho_s <= freeze_frac sum_tol (T - lo - j) / T (docs/METHOD.md section 9)."""
        import torch

        from .system import suffix_sum

        j = torch.arange(rho.shape[1], device=rho.device)
        total = spent[:, None] + suffix_sum(torch.where(valid, rho, torch.zeros_like(rho)), dim=1)
        share = config.freeze_frac * config.sum_tol * (num_steps - lo[:, None] - j[None, :]).to(rho.dtype) / num_steps
        ok = valid & (total <= share)
        first = torch.where(ok, j[None, :], torch.full_like(ok, rho.shape[1], dtype=torch.long)).min(dim=1).values
        return valid & (j[None, :] >= first[:, None])

    def updated(self, valid: Any, u_star: Any, accepted: Any) -> Any:
        return super().updated(valid, u_star, accepted) | (accepted & (u_star < 0)[:, None])


# --- "target": the fidelity target (docs/METHOD.md section 9) -------------------------------------------------------
# The margin between the target and the PSNR-equivalent of x_0's change per iteration at which the rule stops,
# and the residual test's factor (the summed rho of the iterate before the update within TARGET_RESID_FACTOR tol),
# both chosen on the tuning cells of benchmarks/validation_cells.yaml (docs/METHOD.md section 9).
TARGET_MARGIN_DB = 0.0
TARGET_RESID_FACTOR = 2.0
# The precision floor (docs/METHOD.md section 9): at a state within rounding of the fixed point, step t's first-order
# residual is about ROUNDING_GAIN u RMS(drift_t), u the network's unit roundoff and drift_t the model-output part of
# the step (measured by perturbing the network's input below its resolution at the sequential trajectories of the
# tuning cells: 4.8 to 6.2 on tiny-dit and tiny-sd in bfloat16). The target rule's residual test also accepts a summed
# residual within TARGET_FLOOR_FACTOR times the window's summed estimate, when x_0's small change is not a chance dip
# of the rounding (Target.after_update); the factor was chosen on the tuning cells.
ROUNDING_GAIN = 6.0
TARGET_FLOOR_FACTOR = 2.0


def target_rms(target_db: float) -> float:
    """The RMS distance of x_0 (data range 2, [-1, 1]) at PSNR `target_db`: 2 * 10^(-target_db / 20)."""
    return 2.0 * 10.0 ** (-target_db / 20.0)


@register
class Target(StopRule):
    """Rule "target": stop at the PSNR `target_db` of x_0 against the sequential x_0 (docs/METHOD.md section 9).

    The threshold follows from the target: tol = `target_rms(target_db)`. A window that does not reach x_0 (lo > 0)
    moves as under "sum" with the budget tol (states within their share tol / T are accepted as measured). The window
    that reaches x_0 is never accepted on its residuals (its top state takes the exact step, the rest the update);
    after the update (`after_update`) it is accepted as a whole, and its sample finished with the updated trajectory,
    when the update changed x_0 by at most tol (less the margin), RMS(x_0^new - x_0^cur) <= tol 10^(-margin / 20),
    and the summed rho of the iterate before the update (spent plus the window's) is at most
    TARGET_RESID_FACTOR tol: a small change of x_0 while the residuals stay large is stagnation, not convergence.
    With a network whose rounding puts the residuals on a floor above that (the precision floor: `floor`, estimated
    by `_iteration.rounding_noise` from the model's unit roundoff), the summed rho may instead be within
    TARGET_FLOOR_FACTOR times the floor, if x_0's small change is steady: the change the iteration before made was
    within tol too, or the two changes contract fast enough that the distance left of a geometric contraction,
    change^2 / (previous - change), is within tol (a history method only: the previous change is read from the
    history). The checked iterate is the returned one. Where the iteration contracts x_0's error by a factor r per
    iteration, the distance left is r / (1 - r) times that change (at most the change while r <= 1/2)."""

    name = "target"
    options = ("target_db",)
    recountable = False
    summary = "x0 within target_db"
    reads_floor = True

    def tag_parts(self, c: Mapping[str, Any]) -> list[str]:
        return [f"db{fmt_num(c.get('target_db', 40.0))}"]

    def thresholds(self, config: Any, schedule: Any) -> Any:
        import torch

        return torch.full_like(schedule.sigma, target_rms(config.target_db) / schedule.num_steps)

    def bad(self, config: Any, rho: Any, valid: Any, lo: Any, thr: Any, spent: Any, num_steps: int) -> Any:
        moving = (lo > 0)[:, None] & (rho <= target_rms(config.target_db) / num_steps)
        return valid & ~moving

    def after_update(self, config: Any, x_cur: Any, x_new: Any, valid: Any, lo: Any, u_star: Any, accepted: Any,
                     rsum: Any, floor: Any = None, prev_change: Any = None) -> tuple[Any, Any]:
        import torch

        change = (x_new[:, 0] - x_cur[:, 0]).pow(2).mean(dim=-1).sqrt()  # window position 0 is x_0 when lo = 0
        tol = target_rms(config.target_db)
        small = change <= tol * 10.0 ** (-TARGET_MARGIN_DB / 20.0)
        settled = small & (rsum <= TARGET_RESID_FACTOR * tol)
        if floor is not None and prev_change is not None:
            # on the precision floor: the residual is no more than the network's rounding explains, and x_0's small
            # change is no chance dip of that rounding: the change before it was within tol too, or the two contract
            # fast enough that the distance left of a geometric contraction, change^2 / (prev - change), is within tol
            left = change * change / (prev_change - change).clamp(min=torch.finfo(change.dtype).tiny)
            steady = (prev_change <= tol) | ((prev_change > change) & (left <= tol) & prev_change.isfinite())
            settled = settled | (small & steady & (rsum <= TARGET_FLOOR_FACTOR * floor))
        done = (lo == 0) & valid[:, 0] & settled
        return torch.where(done, torch.full_like(u_star, -1), u_star), accepted | (done[:, None] & valid)
