"""How tests/data/*_44e540d.* were written: run at commit 44e540d (the config layout before issue 20), from a
checkout of it: ``python tests/data/make_44e540d_fixture.py tests/data``. Kept to document the fixture; the
tests only read its output."""

import json
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, "tests")
from conftest import TINY_MODEL, compose_config  # noqa: E402

from diffusion.core.sampling import Sampler  # noqa: E402
from diffusion.training.builders import build_module  # noqa: E402
from diffusion.training.checkpoints import export_safetensors  # noqa: E402

out = sys.argv[1]
x0 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
expected = {"x0": x0}
weights = None
for name, extra in (("denoising", []), ("ect", ["experiment=ect"])):
    torch.manual_seed(0)
    cfg = compose_config("train", [*TINY_MODEL, "paths.output_dir=.", *extra])
    module = build_module(cfg, 3, 16, ["a", "b", "c"], [5, 3, 2])
    if weights is None:
        weights = module.state_dict()
        export_safetensors(weights, module.checkpoint_info(), f"{out}/checkpoint_44e540d.safetensors")
    else:
        module.load_state_dict(weights)
        with open(f"{out}/ect_info_44e540d.json", "w") as f:
            f.write(json.dumps(module.checkpoint_info(), indent=1) + "\n")
    sampler = Sampler("euler", steps=3, spacing="karras")
    samples = module.sample(2, labels=torch.tensor([0, 2]), sampler=sampler, generator=torch.Generator().manual_seed(0))
    expected[f"{name}_samples"] = samples.contiguous()
    loss = module.loss(x0 * module.schedule.input_scale, torch.tensor([0, 1]), torch.Generator().manual_seed(0))
    expected[f"{name}_loss"] = loss.detach().contiguous()
save_file(expected, f"{out}/expected_44e540d.safetensors")
