"""A small class-conditional diffusion model of 8x8 handwritten digits.

The network is a two-level U-Net that works at the data's native 8x8 resolution (8x8 -> 4x4 and
back); upsampling the data to 16x16 adds no information and quadruples the cost of every step, so
images are generated at 8x8 and only enlarged, nearest neighbour, for viewing. It predicts ``v``
(``alpha * noise - sigma * x0``) under a continuous cosine noise schedule, conditioned on a
sinusoidal timestep embedding plus a class embedding with 11 entries: the digits 0-9 and a
"null" class (index 10) used for classifier-free guidance.

Public surface, all an app needs:

* :func:`load` builds the network from a safetensors file (fp16 on disk; fp32 on CPU, fp16 on
  CUDA) on CUDA when available and CPU otherwise.
* :func:`sample` runs a deterministic DDIM sampler (eta = 0) with classifier-free guidance and
  returns ``N x 8 x 8`` images in ``[0, 1]`` on the CPU.
* :func:`to_png_bytes` and :func:`strip` turn images into PNGs.

Only torch, numpy and safetensors (plus Pillow for the PNG helpers) are imported.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES
IMAGE_SIZE = 8
SCHEDULE = "cosine(s=0.008), continuous t in [0,1], v-prediction"
_COSINE_S = 0.008


@dataclass(frozen=True)
class Config:
    """Architecture hyper-parameters; stored in the weights file's metadata."""

    channels: int = 48
    inner_channels: int = 96
    emb_dim: int = 128
    groups: int = 8

    def to_metadata(self) -> dict[str, str]:
        return {f"config.{k}": str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> Config:
        fields = cls.__dataclass_fields__
        return cls(**{k: int(metadata[f"config.{k}"]) for k in fields if f"config.{k}" in metadata})


def alpha_sigma(t: Tensor) -> tuple[Tensor, Tensor]:
    """Signal and noise scales of the cosine schedule at times ``t`` in ``[0, 1]``."""
    angle = (t + _COSINE_S) / (1 + _COSINE_S) * (math.pi / 2)
    return torch.cos(angle), torch.sin(angle)


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of ``t * 1000`` (fp32), shape ``len(t) x dim``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * 1000.0 * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _zero(conv: nn.Conv2d) -> None:
    """Zero-initialise a convolution so the block it ends starts as the identity."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv residual block with a FiLM (scale, shift) from the embedding."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip: nn.Module = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        _zero(self.conv2)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class DigitUNet(nn.Module):
    """Two-level U-Net on ``N x 1 x 8 x 8`` inputs; predicts ``v``."""

    def __init__(self, config: Config | None = None) -> None:
        super().__init__()
        cfg = config or Config()
        self.config = cfg
        c, c2, e, g = cfg.channels, cfg.inner_channels, cfg.emb_dim, cfg.groups
        self.time_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.class_emb = nn.Embedding(NUM_CLASSES + 1, e)
        self.conv_in = nn.Conv2d(1, c, 3, padding=1)
        self.block_hi = ResBlock(c, c, e, g)
        self.down = nn.Conv2d(c, c2, 3, stride=2, padding=1)
        self.block_lo1 = ResBlock(c2, c2, e, g)
        self.block_lo2 = ResBlock(c2, c2, e, g)
        self.up = nn.Conv2d(c2, c, 3, padding=1)
        self.block_out = ResBlock(2 * c, c, e, g)
        self.norm_out = nn.GroupNorm(g, c)
        self.conv_out = nn.Conv2d(c, 1, 3, padding=1)
        _zero(self.conv_out)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        dtype = self.conv_in.weight.dtype
        temb = timestep_embedding(t, self.config.emb_dim).to(dtype)
        emb = F.silu(self.time_mlp(temb) + self.class_emb(labels))
        h0 = self.block_hi(self.conv_in(x.to(dtype)), emb)
        h = self.down(h0)
        h = self.block_lo2(self.block_lo1(h, emb), emb)
        h = self.up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.block_out(torch.cat([h, h0], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h))).float()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load(path: str, device: str | torch.device | None = None) -> DigitUNet:
    """Build the network from safetensors weights, in eval mode, on ``device``.

    ``device`` defaults to CUDA when available, else CPU. Weights are stored in fp16; they run in
    fp16 on CUDA and fp32 on CPU (where fp16 convolutions are slow).
    """
    dev = torch.device(device) if device is not None else default_device()
    with safe_open(path, framework="pt") as st:
        metadata = st.metadata() or {}
    model = DigitUNet(Config.from_metadata(metadata))
    state = load_file(path)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    return model.to(device=dev, dtype=dtype).eval()


def _as_list(value: float | Sequence[float], n: int, name: str) -> list[float]:
    if isinstance(value, int | float):
        return [float(value)] * n
    values = [float(v) for v in value]
    if len(values) != n:
        raise ValueError(f"{name}: expected {n} values, got {len(values)}")
    return values


def initial_noise(n: int, seed: int | Sequence[int]) -> Tensor:
    """The starting noise ``n x 1 x 8 x 8``, drawn on the CPU so every device sees the same.

    An ``int`` seeds one generator for the whole batch; a sequence gives each image its own
    generator, so image ``i`` of a batched call equals ``sample([d], seed=seeds[i])``.
    """
    shape = (1, IMAGE_SIZE, IMAGE_SIZE)
    if isinstance(seed, int):
        gen = torch.Generator().manual_seed(seed)
        return torch.randn((n, *shape), generator=gen)
    seeds = list(seed)
    if len(seeds) != n:
        raise ValueError(f"seed: expected {n} seeds, got {len(seeds)}")
    return torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    )


@torch.inference_mode()
def sample(
    model: DigitUNet,
    digits: Sequence[int],
    steps: int = 20,
    guidance: float | Sequence[float] = 2.0,
    seed: int | Sequence[int] = 0,
    device: str | torch.device | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Generate one image per entry of ``digits`` with DDIM (eta = 0) and classifier-free guidance.

    Returns a float32 CPU tensor ``N x 8 x 8`` in ``[0, 1]`` (0 = background; multiply by 16 for
    the scale of sklearn's digits). Deterministic for a given ``seed`` (see :func:`initial_noise`
    for per-image seeds). ``guidance`` is the CFG scale ``w`` in ``uncond + w * (cond - uncond)``;
    1.0 disables guidance and halves the work; it may also be given per image. ``device``
    defaults to the model's device.
    """
    n = len(digits)
    if n == 0:
        return torch.zeros(0, IMAGE_SIZE, IMAGE_SIZE)
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if any(not 0 <= int(d) < NUM_CLASSES for d in digits):
        raise ValueError(f"digits must be in 0..{NUM_CLASSES - 1}")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    scales = _as_list(guidance, n, "guidance")
    use_cfg = any(w != 1.0 for w in scales)
    w = torch.tensor(scales, device=dev)[:, None, None, None]
    labels = torch.tensor([int(d) for d in digits], device=dev)
    if use_cfg:
        labels = torch.cat([labels, torch.full_like(labels, NULL_CLASS)])
    start = initial_noise(n, seed) if noise is None else noise
    if start.shape != (n, 1, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"noise: expected shape {(n, 1, IMAGE_SIZE, IMAGE_SIZE)}")
    x = start.to(dev)
    ts = torch.linspace(1.0, 0.0, steps + 1, device=dev)
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        a, s = alpha_sigma(t)
        a_next, s_next = alpha_sigma(t_next)
        if use_cfg:
            v_cond, v_uncond = model(torch.cat([x, x]), t.expand(2 * n), labels).chunk(2)
            v = v_uncond + w * (v_cond - v_uncond)
        else:
            v = model(x, t.expand(n), labels)
        x0 = (a * x - s * v).clamp(-1.0, 1.0)
        eps = (x - a * x0) / s
        x = a_next * x0 + s_next * eps
    return ((x0[:, 0] + 1.0) / 2.0).clamp(0.0, 1.0).float().cpu()


def _to_uint8(images: Tensor) -> np.ndarray:
    imgs = images.detach().float().cpu()
    if imgs.dim() == 4:
        imgs = imgs[:, 0]
    if imgs.dim() == 2:
        imgs = imgs[None]
    return (imgs.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()


def _png(array: np.ndarray, scale: int) -> bytes:
    from PIL import Image  # imported here: Pillow is needed only by the PNG helpers

    img = Image.fromarray(array, mode="L")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def to_png_bytes(images: Tensor, scale: int = 8) -> list[bytes]:
    """One greyscale PNG per image (white digit on black), enlarged ``scale`` times."""
    return [_png(a, scale) for a in _to_uint8(images)]


def strip(images: Tensor, scale: int = 8, gap: int = 1) -> bytes:
    """One PNG of the images side by side, ``gap`` source pixels apart, enlarged ``scale`` times."""
    arrays = _to_uint8(images)
    n, h, w = arrays.shape
    if n == 0:
        raise ValueError("no images")
    canvas = np.zeros((h, n * w + (n - 1) * gap), dtype=np.uint8)
    for i, a in enumerate(arrays):
        canvas[:, i * (w + gap) : i * (w + gap) + w] = a
    return _png(canvas, scale)
