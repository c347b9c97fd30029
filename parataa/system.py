"""The triangular system of docs/METHOD.md sections 1-2 and 8: residuals of order k over a padded window.

No model, no I/O, no randomness: pure tensor algebra in float64.

Layout. Each sample n has its own window of unknowns x_t for t in [lo_n, f_n): f_n is the lowest frozen
state (x_T at the start), lo_n = max(f_n - W, 0), w_n = f_n - lo_n. Windows are stored padded to
[N, Wmax, D]: position j holds step t = lo_n + j and is valid while j < w_n. Extended windows ([N, Wmax+1, D])
also hold the frozen state x_f at position w_n.

    g_t   = b_t eps(x_{t+1}, tau_t) + c_t xi_t                  (the non-linear and noise part of step t)
    R_t   = a_t x_{t+1} + g_t - x_t                               (first-order residual; drives stopping)
    F^k_t = P_{t,t+k'} x_{t+k'} + sum_{s=t}^{t+k'-1} P_{t,s} g_s - x_t,   k' = min(k, f - t)   ("exact" splitting)
    E^k_t = x_{t+k'} + sum_{s=t}^{t+k'-1} ((a_s - 1) x_{s+1} + g_s) - x_t                      ("euler" splitting)

Both splittings have the sequential trajectory as their only fixed point and agree at k = 1 (docs/METHOD.md
section 8): the exact one integrates the linear part a_s x_{s+1} exactly, the Euler one sums the increments
x_s - x_{s+1} of each step from the state k' steps above, as ParaDiGMS does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

__all__ = [
    "LinearStep",
    "StepRule",
    "Window",
    "make_window",
    "step_rhs",
    "order_k_rhs",
    "euler_rhs",
    "splitting_rhs",
    "suffix_sum",
    "rms",
    "STEP_RULES",
    "family_name",
    "step_rule",
]


class StepRule:
    """The recurrence of a sampler: how step t writes x_t (docs/METHOD.md section 1, "The step rule").

    Every solver and both engines compute a step through this object and nothing else, so a sampler family is
    one subclass. The contract:

    - A step is affine in the state directly above it: x_t = a_t x_{t+1} + g_t, with
      g_t = drift_t + noise_t, drift_t the part made of model outputs and noise_t the part made of the fixed
      noise xi_t. The order-k splittings (docs/METHOD.md sections 2 and 8) and the stopping rule's first-order
      residual R_t = a_t x_{t+1} + g_t - x_t rely on this form; anything non-linear in the states must go
      through the model outputs.
    - `reads` is how many consecutive model outputs a step reads: outs[i] is the output at state x_{t+1+i},
      i < reads, each evaluated at the model timestep of step t+i (`timesteps` of the schedule). DDIM/DDPM read
      one (eps at x_{t+1}); DPM-Solver++(2M) reads two (its data predictions at x_{t+1} and x_{t+2}: in a
      parallel window both come from the iteration's one batched model call, the one at the frozen state above
      the window from the call that evaluated it, kept in `SolverState.out`). The step that writes x_{T-1} has no
      x_{T+1}: a rule with reads = 2 gives its second output zero weight there, and the engines pass zeros.
    - What the model returns is the rule's to interpret: a noise prediction eps (`LinearStep`), or a velocity v
      (flow matching: x_t = x_{t+1} + (s_t - s_{t+1}) v(x_{t+1}) is a = 1, drift = (s_t - s_{t+1}) v, noise = 0).
      `output` maps the model's output at the state x_{t+1} to what the steps read (outs[i] above), where the
      engines take it from the model: the identity by default, the data prediction D = (x - sigma eps) / alpha for
      DPM-Solver++(2M). It may read the state, so the mapped output is a function of that state alone; the
      engines keep and pass mapped outputs.
    - Tables are indexed by step t with one scratch entry at index T (a = 1 and zero drift and noise weights):
      the static engine's padding positions read it and write nothing that counts. t may be a tensor of any
      shape [...]; x_up, xi and every outs[i] are then [..., D] and so is every result.
    - Rules are pure: no state, no I/O; the coefficients are float64 on the schedule's device.
    """

    reads: int = 1

    def a(self, t: torch.Tensor) -> torch.Tensor:
        """a_t [...]: the coefficient of x_{t+1} (the splittings read it per step)."""
        raise NotImplementedError

    def output(self, t: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """What the steps read of the model's output `out` at x = x_{t+1} (both [..., D]): `out` itself here."""
        return out

    def drift(self, t: torch.Tensor, outs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The model-output part of g_t."""
        raise NotImplementedError

    def noise(self, t: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """The noise part of g_t."""
        raise NotImplementedError

    def g(self, t: torch.Tensor, outs: tuple[torch.Tensor, ...], xi: torch.Tensor) -> torch.Tensor:
        """g_t = drift_t + noise_t: the part of step t that is not linear in x_{t+1}."""
        return self.drift(t, outs) + self.noise(t, xi)

    def step(self, t: torch.Tensor, x_up: torch.Tensor, outs: tuple[torch.Tensor, ...], xi: torch.Tensor):
        """x_t = a_t x_{t+1} + g_t: one exact step."""
        return step_rhs(self.a(t)[..., None], x_up, self.g(t, outs, xi))


class LinearStep(StepRule):
    """DDIM and DDPM (eta in [0, 1]): x_t = a_t x_{t+1} + b_t eps(x_{t+1}, tau_t) + c_t xi_t, eps the network's
    guided noise prediction (docs/METHOD.md section 1)."""

    def __init__(self, schedule) -> None:
        def pad(v: torch.Tensor, value: float) -> torch.Tensor:
            return torch.cat([v, torch.full((1,), value, dtype=v.dtype, device=v.device)])

        self.a_p, self.b_p, self.c_p = pad(schedule.a, 1.0), pad(schedule.b, 0.0), pad(schedule.c, 0.0)

    def a(self, t: torch.Tensor) -> torch.Tensor:
        return self.a_p[t]

    def drift(self, t: torch.Tensor, outs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.b_p[t][..., None] * outs[0]

    def noise(self, t: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return self.c_p[t][..., None] * xi


# sampler families whose step is not LinearStep's, by family (`family_name`): the one place a family names its rule
STEP_RULES: dict[str, type[StepRule]] = {}


def family_name(name: str) -> str:
    """The sampler family of a `Schedule.name`: the name without its step count ("dpmpp-2m-25" -> "dpmpp-2m")."""
    return re.sub(r"-\d+$", "", name)


def step_rule(schedule) -> StepRule:
    """The step rule of a schedule (tables on the schedule's device): `STEP_RULES[family_name(schedule.name)]`, else
    `LinearStep` (DDIM, DDPM, flow-Euler). Rules read one or two model outputs (`StepRule.reads`)."""
    rule = STEP_RULES.get(family_name(schedule.name), LinearStep)(schedule)
    if rule.reads not in (1, 2):
        raise ValueError(f"{type(rule).__name__}.reads must be 1 or 2 (model outputs per step), got {rule.reads}")
    return rule


@dataclass(frozen=True)
class Window:
    lo: torch.Tensor  # [N] first unknown step of each sample's window
    width: torch.Tensor  # [N] number of unknowns (0 for finished samples)
    t: torch.Tensor  # [N, Wmax] step index at each position (clamped for padding)
    t_up: torch.Tensor  # [N, Wmax+1] state index lo + j, j = 0..Wmax (clamped)
    valid: torch.Tensor  # [N, Wmax] bool
    rows: torch.Tensor  # [N, 1] sample index, for advanced indexing
    num_steps: int  # T

    @property
    def size(self) -> int:
        return int(self.t.shape[1])


def make_window(f: torch.Tensor, window: int, num_steps: int) -> Window:
    """Padded window of every sample given the frozen boundaries f ([N], long)."""
    lo = torch.clamp(f - window, min=0)
    width = f - lo
    wmax = max(int(width.max().item()), 1)
    j = torch.arange(wmax + 1, device=f.device)
    t_up = torch.clamp(lo[:, None] + j[None, :], max=num_steps)
    t = torch.clamp(t_up[:, :wmax], max=num_steps - 1)
    valid = j[None, :wmax] < width[:, None]
    rows = torch.arange(f.shape[0], device=f.device)[:, None]
    return Window(lo=lo, width=width, t=t, t_up=t_up, valid=valid, rows=rows, num_steps=num_steps)


def step_rhs(a: torch.Tensor, x_up: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """a_t x_{t+1} + g_t: one exact step. Sequential sampling and the FP update share this expression."""
    return a * x_up + g


def suffix_sum(v: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """out[t] = sum_{s >= t} v[s] along `dim`."""
    return torch.flip(torch.cumsum(torch.flip(v, (dim,)), dim=dim), (dim,))


def rms(v: torch.Tensor) -> torch.Tensor:
    """Root mean square over the last (flattened state) dimension."""
    return torch.sqrt(torch.mean(v * v, dim=-1))


def order_k_rhs(a: torch.Tensor, g: torch.Tensor, x_ext: torch.Tensor, width: torch.Tensor, order: int) -> torch.Tensor:
    """Right-hand side of the order-k equations for every window position.

    a: [N, Wmax] step coefficients (any value on padding), g: [N, Wmax, D] (zero on padding),
    x_ext: [N, Wmax+1, D] states x_{lo+j} with x_f at position width, width: [N], order: k >= 1.
    Uses L_j = prod_{r<j} a_{lo+r} so that P_{t,s} = L_s / L_t and the inner sums are prefix-sum differences.
    """
    n, wmax, _ = g.shape
    if order == 1:
        return step_rhs(a[..., None], x_ext[:, 1:], g)
    j, valid, end = _window_ends(width, wmax, order)
    log_a = torch.where(valid, torch.log(a), torch.zeros_like(a))
    log_l = torch.cat([torch.zeros(n, 1, dtype=a.dtype, device=a.device), torch.cumsum(log_a, dim=1)], dim=1)
    scale = torch.exp(log_l)  # [N, Wmax+1]
    csum = torch.cat(
        [
            torch.zeros(n, 1, g.shape[2], dtype=g.dtype, device=g.device),
            torch.cumsum(scale[:, :wmax, None] * g, 1),
        ],
        dim=1,
    )
    rows = torch.arange(n, device=g.device)[:, None]
    head = torch.exp(log_l[rows, end] - log_l[:, :wmax])[..., None] * x_ext[rows, end]
    tail = (csum[rows, end] - csum[:, :wmax]) * torch.exp(-log_l[:, :wmax])[..., None]
    return head + tail


def euler_rhs(a: torch.Tensor, g: torch.Tensor, x_ext: torch.Tensor, width: torch.Tensor, order: int) -> torch.Tensor:
    """Right-hand side of the order-k Euler equations: x_{t+k'} plus the increments (a_s - 1) x_{s+1} + g_s of
    the steps s = t .. t+k'-1, from prefix sums (same arguments as `order_k_rhs`)."""
    n, wmax, d = g.shape
    if order == 1:
        return step_rhs(a[..., None], x_ext[:, 1:], g)
    _, valid, end = _window_ends(width, wmax, order)
    inc = torch.where(valid[..., None], (a[..., None] - 1) * x_ext[:, 1:] + g, torch.zeros_like(g))
    csum = torch.cat([torch.zeros(n, 1, d, dtype=g.dtype, device=g.device), torch.cumsum(inc, dim=1)], dim=1)
    rows = torch.arange(n, device=g.device)[:, None]
    return x_ext[rows, end] + csum[rows, end] - csum[:, :wmax]


def splitting_rhs(
    splitting: str, a: torch.Tensor, g: torch.Tensor, x_ext: torch.Tensor, width: torch.Tensor, order: int
) -> torch.Tensor:
    """The order-k right-hand side of the named splitting ("exact" or "euler")."""
    return (euler_rhs if splitting == "euler" else order_k_rhs)(a, g, x_ext, width, order)


def _window_ends(width: torch.Tensor, wmax: int, order: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Position index j, validity, and the end t + k' of every position's order-k equation (clamped on padding)."""
    j = torch.arange(wmax, device=width.device)
    valid = j[None, :] < width[:, None]
    end = torch.minimum(j[None, :] + order, width[:, None]).clamp(min=0)  # [N, Wmax]
    end = torch.where(valid, end, j[None, :] + 1).clamp(max=wmax)
    return j, valid, end
