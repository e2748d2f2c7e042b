"""Every sampler against the closed form on Gaussian data (``core.exact.gaussian_gap``): the table of BENCHMARKS.md.

    python -m diffusion.tools.gaussian_samplers [--schedule edm|linear] [--unipc]

Each cell is the largest |gap| over the data scales s = 0.1, 0.5, 1: a deterministic sampler's relative error against
the exact probability-flow ODE solution, a stochastic one's relative error in spread. NFE becomes steps as in
``sampler_fid``; a figure the sampler now refuses (below its ``least_steps``) is computed anyway and marked ``r``.
``--unipc`` prints UniPC at orders 1 to 3 with and without its lower-order final steps instead.
"""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from diffusion.core.errors import OneLineArgumentParser
from diffusion.core.exact import gaussian_gap
from diffusion.core.samplers import all_samplers
from diffusion.core.samplers.common import model_evaluations, steps_for_nfe
from diffusion.core.schedules import EDMSchedule, LinearSchedule
from diffusion.training.builders import CONF_DIR

SCALES = torch.tensor([0.1, 0.5, 1.0])
NFES = (3, 4, 5, 6, 8, 10, 15, 20, 30, 50)
SCHEDULES = {"edm": EDMSchedule, "linear": LinearSchedule}


def conf_for(name: str) -> dict:
    for path in sorted((CONF_DIR / "sampler").glob("*.yaml")):
        cfg = OmegaConf.to_container(OmegaConf.load(path))
        if cfg["fn"].rsplit(".", 1)[-1] == f"sample_{name}":
            return cfg
    return {}


def cell(name: str, nfe: int, schedule, options: dict | None = None) -> str:
    fn, cfg = all_samplers()[name], conf_for(name)
    options = {**(cfg.get("options") or {}), **(options or {})}
    steps = steps_for_nfe(fn, nfe, options)
    if model_evaluations(fn, steps, options) > nfe:
        return "-"
    sigmas = schedule.karras_sigmas(steps) if cfg.get("spacing", "karras") == "karras" else schedule.sigmas(steps)
    gap = gaussian_gap(fn, sigmas, SCALES, options).abs().max().item()
    return f"{gap:.3g}" + (" r" if steps < getattr(fn, "least_steps", 1) else "")


def row(label: str, cells) -> str:
    return f"| {label} | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", choices=list(SCHEDULES), default="edm", help="whose sigma range (and own levels)")
    parser.add_argument("--unipc", action="store_true", help="UniPC's orders with and without lower-order final steps")
    args = parser.parse_args(argv)
    schedule = SCHEDULES[args.schedule]()
    print(row("sampler", [f"NFE {n}" for n in NFES]))
    print(row("---", ["---"] * len(NFES)))
    variants = [("euler", {})]
    if args.unipc:
        variants += [(f"unipc order={o} lower_order_final={f}", {"order": o, "lower_order_final": f})
                     for o in (1, 2, 3) for f in (True, False)]
    else:
        variants = [(name, {}) for name in all_samplers()]
        variants += [("dpmpp_3m_sde lower_order_final=False", {"lower_order_final": False}), ("unipc order=3", {"order": 3})]
    for label, options in variants:
        name = label.split()[0]
        print(row(label, [cell(name, nfe, schedule, options) for nfe in NFES]), flush=True)


if __name__ == "__main__":
    main()
