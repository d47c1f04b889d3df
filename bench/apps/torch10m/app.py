"""torch10m: a torch app with a 10M-parameter module, for ``bench/coldstart.py``.

setup() builds the module (seeded, so every runner holds the same weights); a request runs one
forward pass on a seeded input. Same requirements as ``apps/digits``, so both share one env.

POST /{owner}/torch10m  {"seed": 0}  ->  {"norm": ..., "parameters": 9968128}
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

import klieg

app = klieg.App(
    "torch10m",
    requirements=["torch==2.13.0", "safetensors>=0.4", "numpy>=1.26", "pillow>=10"],
)


class In(BaseModel):
    seed: int = Field(0, ge=0)


class Out(BaseModel):
    norm: float
    parameters: int


@app.cls(keep_alive=300, startup_timeout=600)
class Torch10M:
    def setup(self) -> None:
        import torch

        torch.manual_seed(0)
        torch.set_num_threads(2)
        self.torch: Any = torch
        self.model = torch.nn.Sequential(
            torch.nn.Linear(1024, 4096),
            torch.nn.GELU(),
            torch.nn.Linear(4096, 1024),
            torch.nn.GELU(),
            torch.nn.Linear(1024, 1536),
        ).eval()

    @klieg.endpoint("/")
    def forward(self, req: In) -> Out:
        generator = self.torch.Generator().manual_seed(req.seed)
        x = self.torch.randn(8, 1024, generator=generator)
        with self.torch.inference_mode():
            y = self.model(x)
        parameters = sum(p.numel() for p in self.model.parameters())
        return Out(norm=float(y.norm()), parameters=parameters)
