"""Train the digits diffusion model on scikit-learn's bundled 8x8 digits (no download).

    python apps/digits/train.py --out apps/digits/weights.safetensors --seed 0

Reproducible for a given seed and step count on the same machine and torch build: every random
draw (initialisation, batches, shifts, timesteps, noise, label dropout) comes from generators
seeded by ``--seed``. ``--minutes`` caps the wall-clock time; the run then stops early, at a
machine-dependent step, and the file's metadata records the steps actually trained.

Recipe: v-prediction MSE under a continuous cosine schedule, 10% of labels replaced by the null
class (for classifier-free guidance), 30% of images shifted by one pixel, AdamW with warm-up and
cosine decay, and an EMA of the weights, which is what gets saved (fp16).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from model import (
    NULL_CLASS,
    SCHEDULE,
    Config,
    DigitUNet,
    alpha_sigma,
    parameter_count,
)
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from torch import Tensor


def load_data() -> tuple[Tensor, Tensor]:
    """sklearn's digits as ``N x 1 x 8 x 8`` in ``[-1, 1]`` and their labels."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0 * 2.0 - 1.0
    y = torch.tensor(digits.target, dtype=torch.long)
    return x, y


def shift(x: Tensor, p: float, gen: torch.Generator) -> Tensor:
    """Move each image one pixel in a random direction (background fills in) with probability p."""
    n, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    offsets = torch.randint(-1, 2, (n, 2), generator=gen)
    offsets[torch.rand(n, generator=gen) >= p] = 0
    out = x.clone()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            idx = ((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).nonzero()[:, 0]
            if len(idx):
                out[idx] = padded[idx, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
    return out


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("weights.safetensors"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock cap")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--p-uncond", type=float, default=0.1)
    parser.add_argument("--p-shift", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    x_all, y_all = load_data()
    config = Config()
    model = DigitUNet(config)
    ema = DigitUNet(config)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    params = list(model.parameters())
    ema_params: list[Tensor] = list(ema.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    n_params = parameter_count(model)
    print(f"{n_params:,} parameters, {len(x_all)} images, up to {args.steps} steps")

    deadline = time.monotonic() + args.minutes * 60 if args.minutes else math.inf
    start = time.monotonic()
    running = 0.0
    step = 0
    while step < args.steps and time.monotonic() < deadline:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, warmup=100)
        idx = torch.randint(0, len(x_all), (args.batch,), generator=gen)
        x0 = shift(x_all[idx], args.p_shift, gen)
        labels = y_all[idx].clone()
        labels[torch.rand(args.batch, generator=gen) < args.p_uncond] = NULL_CLASS
        t = torch.rand(args.batch, generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a, s = (v[:, None, None, None] for v in alpha_sigma(t))
        z = a * x0 + s * noise
        target = a * noise - s * x0
        loss = F.mse_loss(model(z, t, labels), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
        step += 1
        running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
        if step % 250 == 0:
            print(f"step {step:5d}  loss {running:.4f}  {time.monotonic() - start:6.1f}s")

    seconds = time.monotonic() - start
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in ema.state_dict().items()}
    metadata = {
        "format": "klieg-digits-diffusion/1",
        "seed": str(args.seed),
        "steps": str(step),
        "parameters": str(n_params),
        "schedule": SCHEDULE,
        "sampler": "DDIM eta=0, classifier-free guidance",
        "dataset": "sklearn.datasets.load_digits (1797 images, 8x8, scaled to [-1, 1])",
        "batch": str(args.batch),
        "lr": str(args.lr),
        "ema": str(args.ema),
        "p_uncond": str(args.p_uncond),
        "p_shift": str(args.p_shift),
        "train_seconds": f"{seconds:.1f}",
        "torch": torch.__version__,
        **config.to_metadata(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out), metadata=metadata)
    size = args.out.stat().st_size
    print(f"trained {step} steps in {seconds:.1f}s; wrote {args.out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
