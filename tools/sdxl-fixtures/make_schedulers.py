"""Reference fixtures for the SDXL schedulers (crates/models/tests/sdxl_schedulers.rs).

    /tmp/ltx-venv/bin/python tools/sdxl-fixtures/make_schedulers.py

Pinned versions: torch 2.11.0 (CPU), diffusers 0.42.1, numpy 2.4.6 (the environment of
tools/ltx-fixtures/requirements.txt). Deterministic: no model, no download, fixed seeds; run it
by hand after a diffusers bump and commit what it writes to tests/fixtures/sdxl/schedulers/:

- schedulers.json: per configuration (the scheduler_config.json given to diffusers'
  `from_config`, Python's JSON, so `-Infinity` may appear) and per step count: timesteps (as
  diffusers hands them to the UNet), sigmas (none for DDIM), init_noise_sigma; and the sampling
  loops run (seed, steps, eta, dtype).
- schedulers.safetensors: `alphas_cumprod/<config>` (once per distinct schedule; each
  configuration names its key) and per loop `loop/<name>/{initial,final,
  after}`: the initial latents `randn([1,4,8,8], generator) * init_noise_sigma`, the sample after
  every step ran, and 8 draws from the same generator after the loop (its state).

The loops use no UNet: the fake model output is `0.3 * scale_model_input(x) + sin(t / 137)`.
The generator is `torch.Generator("cpu").manual_seed(seed)`, passed to `step` as a pipeline does.
"""

import json
import math
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler)
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[2] / "tests/fixtures/sdxl/schedulers"
STEPS = [1, 2, 4, 7, 25, 30, 50, 61]
SHAPE = (1, 4, 8, 8)
CLASSES = {c.__name__: c for c in (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
                                   DPMSolverMultistepScheduler, DDIMScheduler)}

# stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json, keys as published
# (clip_sample, set_alpha_to_one, skip_prk_steps, sample_max_value are unknown to Euler).
SDXL_BASE = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def sdxl(cls, **over):
    return {**SDXL_BASE, "_class_name": cls, **over}


E, EA, DPM, DDIM = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                    "DPMSolverMultistepScheduler", "DDIMScheduler")
LINEAR = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}
# 100 training steps with explicit betas (trained_betas wins over beta_schedule).
TRAINED = {"num_train_timesteps": 100,
           "trained_betas": [round(0.0005 + 0.0004 * i + 1e-6 * i * i, 8) for i in range(100)]}

# name -> (config, sampling loops as [(steps, eta[, dtype of latents and model output])])
CONFIGS = {
    "euler_sdxl": (sdxl(E), [(30, 0.0), (4, 0.0), (30, 0.0, "float16")]),
    "euler_trailing": (sdxl(E, timestep_spacing="trailing"), [(7, 0.0)]),
    "euler_linspace": (sdxl(E, timestep_spacing="linspace"), [(25, 0.0)]),
    "euler_karras": (sdxl(E, use_karras_sigmas=True), [(25, 0.0)]),
    "euler_karras_sigma_range": (
        sdxl(E, use_karras_sigmas=True, sigma_min=0.03, sigma_max=12.0), [(7, 0.0)]),
    "euler_linear_betas": (sdxl(E, **LINEAR), [(7, 0.0)]),
    "euler_vpred_zero_snr": (
        sdxl(E, prediction_type="v_prediction", timestep_spacing="trailing",
             rescale_betas_zero_snr=True), [(25, 0.0)]),
    "euler_exponential_sigma_min": (
        sdxl(E, use_exponential_sigmas=True, final_sigmas_type="sigma_min"), [(7, 0.0)]),
    "euler_cosine_loglinear": (
        sdxl(E, beta_schedule="squaredcos_cap_v2", interpolation_type="log_linear",
             timestep_spacing="linspace", steps_offset=0), [(7, 0.0)]),
    "euler_continuous_vpred": (
        sdxl(E, prediction_type="v_prediction", timestep_type="continuous",
             use_karras_sigmas=True), [(7, 0.0)]),
    "euler_sample_prediction": (
        sdxl(E, prediction_type="sample", timestep_spacing="trailing"), [(4, 0.0)]),
    "euler_a_sdxl": (sdxl(EA), [(30, 0.0), (1, 0.0), (25, 0.0, "float16")]),
    "euler_a_trailing_vpred": (
        sdxl(EA, timestep_spacing="trailing", prediction_type="v_prediction"), [(7, 0.0)]),
    "dpm_2m_sdxl": (sdxl(DPM, lambda_min_clipped=float("-inf")),
                    [(25, 0.0), (7, 0.0), (25, 0.0, "float16")]),
    "dpm_2m_karras": (sdxl(DPM, use_karras_sigmas=True), [(25, 0.0)]),
    "dpm_2m_sde_karras": (
        sdxl(DPM, algorithm_type="sde-dpmsolver++", use_karras_sigmas=True),
        [(25, 0.0), (7, 0.0), (25, 0.0, "float16")]),
    "dpm_2m_heun_sigma_min": (
        sdxl(DPM, solver_type="heun", final_sigmas_type="sigma_min", lower_order_final=False,
             timestep_spacing="trailing"), [(25, 0.0), (7, 0.0)]),
    "dpm_2m_sde_heun_sigma_min": (
        sdxl(DPM, algorithm_type="sde-dpmsolver++", solver_type="heun",
             final_sigmas_type="sigma_min", **LINEAR), [(7, 0.0)]),
    "dpm_3m_sde_trailing": (
        sdxl(DPM, algorithm_type="sde-dpmsolver++", solver_order=3,
             timestep_spacing="trailing"), [(25, 0.0)]),
    "dpm_3m_euler_at_final_lu": (
        sdxl(DPM, solver_order=3, euler_at_final=True, use_lu_lambdas=True,
             final_sigmas_type="sigma_min", timestep_spacing="linspace"), [(25, 0.0)]),
    "dpm_1_exponential_vpred": (
        sdxl(DPM, solver_order=1, use_exponential_sigmas=True, prediction_type="v_prediction",
             rescale_betas_zero_snr=True), [(7, 0.0)]),
    # Schedule only: its first timesteps repeat (998, 998, ...), so diffusers' step, which finds
    # its index by timestep value, starts at index 1 and runs past the end.
    "dpm_2m_cosine_clipped_karras": (
        sdxl(DPM, beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1,
             use_karras_sigmas=True, timestep_spacing="linspace", steps_offset=0), []),
    "dpm_2m_cosine_clipped": (
        sdxl(DPM, beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1,
             timestep_spacing="linspace", steps_offset=0), [(7, 0.0)]),
    "dpm_2m_sample_prediction": (
        sdxl(DPM, prediction_type="sample", timestep_spacing="leading"), [(4, 0.0)]),
    "ddim_sdxl": (sdxl(DDIM), [(30, 0.0)]),
    "ddim_trailing_eta": (
        sdxl(DDIM, timestep_spacing="trailing", clip_sample=True, clip_sample_range=1.5),
        [(7, 0.5), (25, 1.0), (7, 0.5, "float16")]),
    "ddim_vpred_linspace": (
        sdxl(DDIM, prediction_type="v_prediction", timestep_spacing="linspace",
             set_alpha_to_one=True, rescale_betas_zero_snr=True), [(25, 0.0)]),
    "ddim_trained_betas_100": (sdxl(DDIM, **TRAINED, steps_offset=0), [(25, 0.0)]),
    "euler_a_trained_betas_zero_snr_100": (
        sdxl(EA, **TRAINED, rescale_betas_zero_snr=True, timestep_spacing="linspace"),
        [(7, 0.0)]),
    "ddim_sample_prediction": (
        sdxl(DDIM, prediction_type="sample", **LINEAR), [(4, 0.5)]),
}


def build(config):
    return CLASSES[config["_class_name"]].from_config(config)


def values(t):
    return [int(v) if not torch.is_floating_point(t) else float(v) for v in t.tolist()]


def schedule(config, steps):
    s = build(config)
    s.set_timesteps(steps)
    sigmas = getattr(s, "sigmas", None) if config["_class_name"] != DDIM else None
    return {
        "steps": steps,
        "timesteps": values(s.timesteps),
        "timestep_dtype": str(s.timesteps.dtype).removeprefix("torch."),
        "sigmas": None if sigmas is None else [float(v) for v in sigmas.tolist()],
        "init_noise_sigma": float(s.init_noise_sigma),
    }


def sample_loop(config, steps, eta, seed, dtype):
    """The pipeline's loop: latents and model output in `dtype` (an fp16 pipeline's)."""
    s = build(config)
    s.set_timesteps(steps)
    g = torch.Generator("cpu").manual_seed(seed)
    latents = diffusers.utils.torch_utils.randn_tensor(SHAPE, generator=g, dtype=dtype)
    latents = latents * s.init_noise_sigma
    initial = latents.clone()
    kwargs = {"eta": eta} if config["_class_name"] == DDIM else {}
    for t in s.timesteps:
        x_in = s.scale_model_input(latents, t)
        out = 0.3 * x_in + math.sin(float(t) / 137.0)
        latents = s.step(out, t, latents, generator=g, **kwargs).prev_sample
    return initial, latents, torch.randn(8, generator=g)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    tensors, doc = {}, {"diffusers": diffusers.__version__, "torch": torch.__version__,
                        "numpy": np.__version__, "shape": list(SHAPE), "configs": {}}
    for k, (name, (config, loops)) in enumerate(CONFIGS.items()):
        entry = {"config": config, "schedules": [schedule(config, n) for n in STEPS],
                 "loops": []}
        ac = build(config).alphas_cumprod.contiguous()
        same = [k for k, v in tensors.items() if k.startswith("alphas_cumprod/") and v.equal(ac)]
        entry["alphas_cumprod"] = same[0] if same else f"alphas_cumprod/{name}"
        tensors.setdefault(entry["alphas_cumprod"], ac)
        for j, (steps, eta, *dtype) in enumerate(loops):
            dtype = dtype[0] if dtype else "float32"
            seed = 1000 + 10 * k + j
            loop = f"{name}_{steps}" + ("" if dtype == "float32" else f"_{dtype}")
            initial, final, after = sample_loop(config, steps, eta, seed, getattr(torch, dtype))
            tensors[f"loop/{loop}/initial"] = initial.contiguous()
            tensors[f"loop/{loop}/final"] = final.contiguous()
            tensors[f"loop/{loop}/after"] = after.contiguous()
            entry["loops"].append({"name": loop, "steps": steps, "eta": eta, "seed": seed,
                                   "dtype": dtype})
        doc["configs"][name] = entry
    # One line per schedule keeps the file small and its diffs readable.
    text = json.dumps(doc, separators=(",", ":")).replace(',{"steps"', ',\n{"steps"')
    (OUT / "schedulers.json").write_text(text + "\n")
    save_file(tensors, str(OUT / "schedulers.safetensors"))
    sizes = {p.name: p.stat().st_size for p in OUT.iterdir()}
    print(f"{len(CONFIGS)} configs, {sum(len(v[1]) for v in CONFIGS.values())} loops -> {OUT}",
          sizes)


if __name__ == "__main__":
    main()
