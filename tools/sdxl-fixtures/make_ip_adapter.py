#!/usr/bin/env python3
"""Fixtures for InstantID's face adapter (`ip-adapter.bin`): a tiny random Resampler
(`image_proj`) and IP-Adapter key/value weights (`ip_adapter`), saved with real `torch.save`
as InstantX ships it, plus the references the Rust side checks against. See
`../shared/specs/instantid.md` §1.2 (the Resampler and the key names) and
`../shared/specs/sdxl-notes.md` (`ip-adapter.bin`).

Usage (from the repository root, in the venv of tools/ltx-fixtures/requirements.txt: torch
2.11.0, diffusers 0.42.1):

    python tools/sdxl-fixtures/make_ip_adapter.py

Writes tests/fixtures/sdxl/ip/:
- ip-adapter.bin — {"image_proj": {...}, "ip_adapter": {...}} (a zip torch.save, as InstantX's);
  the Resampler: dim 128, dim_head 64 (2 heads), depth 2, 16 queries, embedding 32, output 48,
  ff_mult 4 (the real one: 1280, 20 heads, depth 4, 16, 512, 2048, 4 — all read from the shapes); `ip_adapter`: to_k_ip/to_v_ip pairs for n = 1, 3, 5 (query dims 32, 64, 64).
  Stored in float16 for `image_proj.latents` and `proj_in` (dtype conversion on load), one
  tensor as a view sharing another's storage and one non-contiguous, as real files may have.
- legacy.bin — the `ip_adapter` part saved with _use_new_zipfile_serialization=False.
- foreign.bin — a zip torch.save of a dict holding a non-tensor class instance.
- resampler_ref.safetensors — face embeddings [2, 1, 32] (one zero row: the CFG negative) and
  the Resampler's output [2, 16, 48] (the reference forward above, float32). diffusers'
  `IPAdapterPlusImageProjection` (after `_convert_ip_adapter_image_proj_to_diffusers`) agreed
  with this reference to 2.4e-6 at depth 4 when the script was written; its converter
  hard-codes depth 4 and ff_mult 4, so it cannot load this smaller file.
CPU, float32, fixed seed.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

sys.dont_write_bytecode = True
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402


ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "sdxl" / "ip"

DIM, DIM_HEAD, DEPTH, QUERIES, EMBED, OUTPUT, FF_MULT = 128, 64, 2, 16, 32, 48, 4


class Attention(nn.Module):
    """Perceiver attention as the spec (§1.2) describes InstantX's: norm1 on the features,
    norm2 on the latents, q from the latents, k/v (k first) from [features; latents]."""

    def __init__(self):
        super().__init__()
        inner = DIM_HEAD * (DIM // DIM_HEAD)
        self.heads = DIM // DIM_HEAD
        self.norm1 = nn.LayerNorm(DIM)
        self.norm2 = nn.LayerNorm(DIM)
        self.to_q = nn.Linear(DIM, inner, bias=False)
        self.to_kv = nn.Linear(DIM, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, DIM, bias=False)

    def forward(self, x, latents):
        x = self.norm1(x)
        latents = self.norm2(latents)
        b, lq, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=-2)).chunk(2, dim=-1)

        def heads(t):
            return t.view(b, -1, self.heads, DIM_HEAD).transpose(1, 2)

        q, k, v = heads(q), heads(k), heads(v)
        s = 1 / math.sqrt(math.sqrt(DIM_HEAD))
        w = ((q * s) @ (k * s).transpose(-2, -1)).float().softmax(dim=-1).to(q.dtype)
        out = (w @ v).transpose(1, 2).reshape(b, lq, -1)
        return self.to_out(out)


def feed_forward():
    return nn.Sequential(
        nn.LayerNorm(DIM),
        nn.Linear(DIM, DIM * FF_MULT, bias=False),
        nn.GELU(),
        nn.Linear(DIM * FF_MULT, DIM, bias=False),
    )


class Resampler(nn.Module):
    def __init__(self):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, QUERIES, DIM) / DIM**0.5)
        self.proj_in = nn.Linear(EMBED, DIM)
        self.proj_out = nn.Linear(DIM, OUTPUT)
        self.norm_out = nn.LayerNorm(OUTPUT)
        self.layers = nn.ModuleList(nn.ModuleList([Attention(), feed_forward()]) for _ in range(DEPTH))

    def forward(self, x):
        latents = self.latents.repeat(x.size(0), 1, 1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


def main() -> None:
    torch.manual_seed(20260)
    OUT.mkdir(parents=True, exist_ok=True)
    res = Resampler().eval()
    # Non-trivial norms so a swapped norm1/norm2 would show.
    with torch.no_grad():
        for name, p in res.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    image_proj = {k: v.detach().clone() for k, v in res.state_dict().items()}
    ip = {}
    for n, qdim in [(1, 32), (3, 64), (5, 64)]:
        ip[f"{n}.to_k_ip.weight"] = torch.randn(qdim, OUTPUT) * 0.1
        ip[f"{n}.to_v_ip.weight"] = torch.randn(qdim, OUTPUT) * 0.1

    # What the Rust side must compute: float32 from the values as stored (fp16 rounding first).
    image_proj["latents"] = image_proj["latents"].half()
    image_proj["proj_in.weight"] = image_proj["proj_in.weight"].half()
    res32 = Resampler().eval()
    res32.load_state_dict({k: v.float() for k, v in image_proj.items()})

    emb = torch.randn(2, 1, EMBED)
    emb[0] = 0  # the CFG negative: Resampler(0), which is not zero
    with torch.no_grad():
        out = res32(emb)

    # Storage sharing and strides as real checkpoints can have them.
    stacked = torch.stack([ip["3.to_k_ip.weight"], ip["3.to_v_ip.weight"]])
    ip["3.to_k_ip.weight"], ip["3.to_v_ip.weight"] = stacked[0], stacked[1]
    ip["5.to_v_ip.weight"] = ip["5.to_v_ip.weight"].t().contiguous().t()
    assert not ip["5.to_v_ip.weight"].is_contiguous()

    obj = {"image_proj": image_proj, "ip_adapter": ip}
    torch.save(obj, OUT / "ip-adapter.bin")
    torch.save({"ip_adapter": ip}, OUT / "legacy.bin", _use_new_zipfile_serialization=False)
    torch.save({"image_proj": {"latents": torch.zeros(1)}, "note": torch.nn.Identity()}, OUT / "foreign.bin")
    save_file(
        {"embeds": emb, "out": out.contiguous()},
        OUT / "resampler_ref.safetensors",
        metadata={"torch": torch.__version__},
    )
    print("wrote", OUT)


if __name__ == "__main__":
    main()
