#!/usr/bin/env python3
"""References for the pieces LTXConditionPipeline (diffusers 0.42.1) adds to the ported models:
T5 with an attention mask, the transformer with explicit `video_coords` and per-token
timesteps, and the schedule (linear-quadratic timesteps, custom lists, shift / shift_terminal,
the denoise-strength trim, the per-token Euler step). `../shared/specs/ltx-condition.md` §2.3,
§2.5, §2.7, §2.8.

Usage (from the repository root, in the venv of tools/ltx-fixtures/requirements.txt, after
make_ltx_fixtures.py, which wipes tests/fixtures/ltx/):

    python tools/ltx-fixtures/make_condition_parts.py

Writes tests/fixtures/ltx/refs/condition_parts.{safetensors,json}. CPU, float32, one thread,
deterministic algorithms, fixed seeds.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.dont_write_bytecode = True
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import T5EncoderModel  # noqa: E402

import diffusers  # noqa: E402
from diffusers import FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel  # noqa: E402
from diffusers.pipelines.ltx.pipeline_ltx_condition import (  # noqa: E402
    LTXConditionPipeline,
    linear_quadratic_schedule,
    retrieve_timesteps,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "ltx"
MODEL = FIXTURES / "models" / "ltx-0.9.5"
REFS = FIXTURES / "refs"


def schedule(cfg: dict, steps: int, timesteps, strength: float):
    """The pipeline's steps 4 of __call__: the (trimmed) timesteps, the full sigmas, latent_sigma."""
    sched = FlowMatchEulerDiscreteScheduler(**cfg)
    if timesteps is None:
        timesteps = linear_quadratic_schedule(steps) * 1000
    ts, n = retrieve_timesteps(sched, steps, "cpu", timesteps)
    sigmas = sched.sigmas
    latent_sigma = None
    if strength < 1:
        trimmed, ts, n = LTXConditionPipeline.get_timesteps(None, sigmas, ts, n, strength)
        latent_sigma = float(trimmed[0])
    return sched, ts, latent_sigma


def main() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out = {}
    meta = {"diffusers": diffusers.__version__, "torch": torch.__version__}
    g = torch.Generator().manual_seed(900)

    # T5 with a padding mask (the condition pipeline passes it; I2V does not).
    t5 = T5EncoderModel.from_pretrained(MODEL / "text_encoder").eval()
    ids = torch.randint(2, t5.config.vocab_size, (2, 12), generator=g)
    mask = torch.zeros(2, 12, dtype=torch.long)
    mask[0, :7] = 1
    mask[1, :3] = 1
    ids[mask == 0] = 0
    with torch.no_grad():
        out["t5_ids"] = ids
        out["t5_mask"] = mask
        out["t5_masked"] = t5(ids, attention_mask=mask)[0]
        out["t5_unmasked"] = t5(ids)[0]
    meta["t5_attn_implementation"] = t5.config._attn_implementation

    # The transformer with explicit video_coords (one extra 1-frame condition of 2x3 tokens at
    # frame 40, then a 2x2x3 latent grid), per-token timesteps and a bool text mask, CFG rows.
    tr = LTXVideoTransformer3DModel.from_pretrained(MODEL / "transformer").eval()
    h, w, f = 2, 3, 2
    def coords(nf, fi):
        grid = torch.stack(torch.meshgrid(torch.arange(nf), torch.arange(h), torch.arange(w), indexing="ij"))
        c = grid.flatten(1).unsqueeze(0) * torch.tensor([8, 32, 32]).view(1, 3, 1)
        c[:, 0] = (c[:, 0] + 1 - 8).clamp(min=0) + fi
        return c
    vc = torch.cat([coords(1, 40), coords(f, 0)], 2).float()
    vc[:, 0] = vc[:, 0] * (1.0 / 25)
    vc = torch.cat([vc, vc])
    s = vc.shape[2]
    hidden = torch.randn(2, s, tr.config.in_channels, generator=g)
    text = torch.randn(2, 16, tr.config.caption_channels, generator=g)
    tmask = torch.zeros(2, 16, dtype=torch.bool)
    tmask[0, :4] = True
    tmask[1, :9] = True
    tt = torch.full((2, s), 700.0)
    tt[:, :h * w] = 300.0  # the extra condition at strength 0.7
    tt[:, h * w:h * w * 2] = 0.0  # latent frame 0 at strength 1
    with torch.no_grad():
        out["tr_hidden"] = hidden
        out["tr_text"] = text
        out["tr_text_mask"] = tmask.to(torch.float32)
        out["tr_timestep"] = tt
        out["tr_video_coords"] = vc
        out["tr_sample"] = tr(hidden_states=hidden, encoder_hidden_states=text, timestep=tt,
                              encoder_attention_mask=tmask, video_coords=vc, return_dict=False)[0]

    # Schedules.
    plain = {"use_dynamic_shifting": False}
    shifted = {"use_dynamic_shifting": False, "shift": 2.0, "shift_terminal": 0.1}
    cases = [
        ("lq40", plain, 40, None, 1.0),
        ("lq15_ds0.4", plain, 15, None, 0.4),
        ("lq3", plain, 3, None, 1.0),
        ("lq2", plain, 2, None, 1.0),
        ("lq1", plain, 1, None, 1.0),
        ("distilled1", plain, 0, [1000.0, 993.0, 987.0, 981.0, 975.0, 909.0, 725.0, 0.03], 1.0),
        ("distilled2_ds0.999", plain, 0, [1000.0, 909.0, 725.0, 421.0, 0.0], 0.999),
        ("shifted_lq10_ds0.5", shifted, 10, None, 0.5),
    ]
    meta["schedules"] = []
    for name, cfg, steps, ts, ds in cases:
        sched, kept, latent_sigma = schedule(cfg, steps if ts is None else len(ts), ts, ds)
        out[f"sched_{name}_timesteps"] = kept.to(torch.float32)
        out[f"sched_{name}_sigmas"] = sched.sigmas.to(torch.float32)
        meta["schedules"].append({"name": name, "config": cfg, "steps": steps, "timesteps": ts,
                                  "denoise_strength": ds, "latent_sigma": latent_sigma})

    # The per-token step on the 15-step schedule at its 10th timestep: tokens at strength 1
    # (t = 0), 0.3 (min(t, 700)) and 0 (t).
    sched, kept, _ = schedule(plain, 15, None, 0.4)
    t = kept[1]
    tt = torch.full((1, 9), float(t))
    tt[0, :3] = 0.0
    tt[0, 3:6] = torch.minimum(t, torch.tensor(700.0))
    x = torch.randn(1, 9, 4, generator=g)
    v = torch.randn(1, 9, 4, generator=g)
    sched._step_index = None
    out["step_tt"] = tt
    out["step_x"] = x
    out["step_v"] = v
    out["step_out"] = sched.step(-v, t, x, per_token_timesteps=tt, return_dict=False)[0]
    meta["step_schedule"] = "lq15_ds0.4"

    REFS.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(REFS / "condition_parts.safetensors"))
    meta["shapes"] = {k: list(v.shape) for k, v in out.items()}
    (REFS / "condition_parts.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    print(json.dumps({m["name"]: m["latent_sigma"] for m in meta["schedules"]}, indent=1))


if __name__ == "__main__":
    main()
