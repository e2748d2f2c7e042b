"""``make mutants``: mutmut over the diffusion math, the samplers included, then the score on the core functions.

mutmut 3 leaves every decorated function alone (a decorator may have side effects when the function is copied for
its trampoline), and every sampler here is decorated with ``@torch.no_grad()`` and the NFE / stochastic markers,
which only wrap the function or set an attribute on it. This runner lets mutmut mutate functions whose decorators are
all of those; the trampoline keeps them (mutmut re-applies a function's decorators to its trampoline and copies).

    python tests/mutation.py run [mutmut run options]   # mutate and test (config: [tool.mutmut] in pyproject.toml)
    python tests/mutation.py score                      # the score, and every surviving mutant, of the core math

The score counts the functions that hold the math (``MATH``): module.py's optimiser, checkpoint and constructor
code is left to the slow Lightning tests and is not part of it.
"""

from __future__ import annotations

import re
import subprocess
import sys

# Decorators that neither run code on definition beyond wrapping nor depend on the function's identity.
SAFE_DECORATORS = re.compile(r"^(torch\.no_grad\(\)|torch\.inference_mode\(\)|stochastic|evaluations\(.*\))$", re.S)

# The functions whose mutants are scored: every function of the core math modules, and the loss path of module.py
# (the label dropout and the training / validation steps).
MATH = re.compile(
    r"^diffusion\.(core\.(schedules|objectives|denoiser|denoising_loss|labels|sampling|samplers(\.\w+)?)\."
    r"|training\.module\.xǁDiffusionModuleǁ(_labels|training_step|validation_step)__mutmut)"
)


def allow_marker_decorators() -> None:
    import libcst as cst
    from mutmut.mutation import file_mutation

    skip = file_mutation.MutationVisitor._skip_node_and_children
    code = cst.Module([]).code_for_node

    def _skip_node_and_children(self, node):
        if isinstance(node, cst.FunctionDef) and node.decorators:
            if all(SAFE_DECORATORS.match(code(d.decorator).strip()) for d in node.decorators):
                return skip(self, node.with_changes(decorators=[]))
        return skip(self, node)

    file_mutation.MutationVisitor._skip_node_and_children = _skip_node_and_children


def score() -> int:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], capture_output=True, text=True, check=True)
    status: dict[str, str] = {}
    for line in out.stdout.splitlines():
        name, _, state = line.strip().rpartition(": ")
        if MATH.match(name):
            status[name] = state
    counts: dict[str, int] = {}
    for state in status.values():
        counts[state] = counts.get(state, 0) + 1
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    total = sum(counts.values())
    print(f"core math: {killed} of {total} mutants killed ({100 * killed / max(total, 1):.1f}%); {counts}")
    for name, state in sorted(status.items()):
        if state not in ("killed", "timeout"):
            print(f"  {state}: {name}")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["score"]:
        return score()
    allow_marker_decorators()
    from mutmut.__main__ import cli

    return cli(argv, standalone_mode=False) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
