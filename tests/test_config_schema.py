"""Every key of the composed configs has a declared type and range, and a value outside it is refused by name.

The bad values come from the schema itself (``Kind.bad_values()``: a string for a number, a negative, zero where
the range excludes it, an unknown name for a choice, a string for a flag), set key by key into configs composed
from every option of every group, and checked in-process; a few go through the entry points as subprocesses.
"""

from __future__ import annotations

import copy
import importlib
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import pytest
from conftest import CONF_DIR, compose_config, describe, run_script
from omegaconf import DictConfig

from diffusion.core.errors import ConfigError
from diffusion.tools.config_check import check_config, plain, sites
from diffusion.tools.config_schema import SAMPLE, SCHEMAS, TRAIN
from diffusion.tools.config_types import ByTarget, Either, Kind, Node

# Groups whose options can be combined freely: the i-th composed config takes each group's i-th option (cycled).
FREE_GROUPS = ("data", "network", "schedule", "objective", "sampler", "optimizer", "trainer", "logger")
# Options that override other groups themselves: one config each.
ALONE = ("experiment", "debug", "hparams_search")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@cache
def configs() -> list[tuple[str, tuple[str, ...], DictConfig]]:
    """(command, overrides, composed config) covering every option of every group of conf/."""
    runs: list[tuple[str, tuple[str, ...]]] = []
    rounds = max(len(options(group)) for group in FREE_GROUPS)
    for i in range(rounds):
        picked = [f"{g}={options(g)[i % len(options(g))]}" for g in FREE_GROUPS]
        runs.append(("train", (*picked, "callbacks=[default,posthoc_ema]")))
    runs += [("train", (f"{group}={name}",)) for group in ALONE for name in options(group) if name != "default"]
    runs += [("sample", ("ckpt=x",)), ("sample", ("ckpt=x", "sampler=restart"))]
    runs += [("evaluate", ("samples=x", f"data={name}")) for name in options("data")]
    runs += [("train_features", ())]
    return [(command, overrides, compose_config(command, overrides)) for command, overrides in runs]


def cases() -> list[tuple[str, str, Kind, dict]]:
    """(command, key, kind, a plain config holding or able to hold the key): each key once per command."""
    seen: dict[tuple[str, str], tuple[str, str, Kind, dict]] = {}
    for command, _, cfg in configs():
        data = plain(cfg)
        for key, kind in sites(data, SCHEMAS[command]):
            seen.setdefault((command, key), (command, key, kind, data))
    return list(seen.values())


def with_value(data: dict, key: str, value) -> dict:
    """A copy of a plain config with ``key`` (dotted) set, as ``key=value`` or ``+key=value`` would."""
    data = copy.deepcopy(data)
    *parents, last = key.split(".")
    node = data
    for name in parents:
        node = node[name]
    node[last] = value
    return data


def check(cfg, command: str) -> str | None:
    try:
        check_config(cfg, SCHEMAS[command])
    except ConfigError as err:
        return str(err)
    return None


def test_the_composed_default_configs_pass():
    for command, overrides, cfg in configs():
        assert check(cfg, command) is None, overrides


def test_every_key_of_the_composed_configs_is_declared():
    """strict: every group closed, every class with declared keys. A key added to a yaml file (or a new callback
    class) without its entry in diffusion/tools/config_schema.py fails here."""
    for command, overrides, cfg in configs():
        check_config(cfg, SCHEMAS[command], strict=True)
    with pytest.raises(ConfigError, match=r"data\.brand_new_key is not a setting of data"):
        check_config(with_value(plain(configs()[0][2]), "data.brand_new_key", 3), TRAIN, strict=True)


def test_every_bad_value_the_schema_names_is_refused_in_one_line_naming_the_key():
    refused = 0
    for command, key, kind, cfg in cases():
        for value in kind.bad_values():
            message = check(with_value(cfg, key, value), command)
            assert message is not None, f"{command}: {key}={value!r} was accepted ({kind})"
            assert message.startswith(f"{key}=") and "must" in message and "\n" not in message, message
            refused += 1
    # every numeric key got a string and a value out of range, every choice an unknown name, every flag a string
    assert refused > 600, refused


def test_a_users_class_keeps_its_own_keys_while_declared_keys_are_checked():
    user = ["network._target_=mypkg.net.TinyNet", "+network.width=64", "sampler.fn=mypkg.samplers.sample_x",
            "+sampler.options.gamma=2", "+callbacks.mine._target_=mypkg.Callback", "+callbacks.mine.every=3"]
    assert check(compose_config("train", user), "train") is None
    assert check(compose_config("train", [*user, "network.base_channels=abc"]), "train").startswith("network.base_channels='abc'")
    assert check(compose_config("train", [*user, "sampler.steps=0"]), "train").startswith("sampler.steps=0 must")
    # the framework's own classes are closed: a misspelt key is named with the closest declared one
    assert check(compose_config("train", ["+trainer.max_step=5"]), "train") == (
        "trainer.max_step is not a setting of trainer; did you mean trainer.max_steps? (check the spelling)")
    assert "sampler.options.etaa" in check(compose_config("train", ["+sampler.options.etaa=1"]), "train")


def _class_names(spec, seen=None) -> set[str]:
    """Every ``closed_for`` entry and ``ByTarget`` key under ``spec``: the code paths the schema names."""
    seen = set() if seen is None else seen
    children: list = []
    if isinstance(spec, Node):
        seen.update(spec.closed_for)
        children = [*spec.keys.values(), spec.each]
    elif isinstance(spec, ByTarget):
        seen.update(spec.nodes)
        children = list(spec.nodes.values())
    elif isinstance(spec, Either):
        children = list(spec.kinds)
    for child in children:
        _class_names(child, seen)
    return seen


def test_every_class_the_schema_names_imports():
    """A renamed or moved class leaves no stale path in the schema: a stale one would leave its group open (a
    typo in its keys passing the check and dying in Hydra's instantiate)."""
    names = set().union(*(_class_names(schema) for schema in SCHEMAS.values()))
    assert "diffusion.core.consistency_tuning.ConsistencyTuning" in names
    for name in sorted(names):
        if name.endswith("."):  # a module prefix
            importlib.import_module(name[:-1])
        else:
            module, _, attr = name.rpartition(".")
            assert hasattr(importlib.import_module(module), attr), name


def test_a_misspelt_key_of_a_training_method_is_refused_by_name():
    assert "did you mean training.method.P_mean?" in check(
        compose_config("train", ["experiment=ect", "+training.method.P_meen=0.5"]), "train")
    assert check(compose_config("train", ["+training.method.sigma_max=3"]), "train").startswith(
        "training.method.sigma_max is not a setting of training.method")


def _cli(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _first_bad(node, key: str):
    return node.keys[key].bad_values()[0 if key != "max_steps" else -2]


END_TO_END = [
    ("train.py", "trainer.max_steps", _first_bad(TRAIN.keys["trainer"], "max_steps")),  # a negative: -7
    ("train.py", "trainer.precision", _first_bad(TRAIN.keys["trainer"], "precision")),  # an unknown name
    ("sample.py", "n", _first_bad(SAMPLE, "n")),  # a string for a number
]


@pytest.mark.slow
def test_bad_values_end_as_one_error_line_and_exit_2_through_the_entry_points(tmp_path):
    def run(script: str, key: str, value) -> tuple:
        args = [f"{key}={_cli(value)}"]
        if script == "train.py":
            args.append(f"hydra.run.dir={tmp_path / key}")
        else:  # checked before the checkpoint is looked for
            args += ["ckpt=absent.ckpt", f"out={tmp_path / key}"]
        return run_script(script, *args)

    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = list(pool.map(lambda case: run(*case), END_TO_END))
    for (script, key, value), proc in zip(END_TO_END, procs):
        assert proc.returncode == 2, describe(proc)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {key}="), describe(proc)
        assert not (tmp_path / key / "checkpoints").exists() and not (tmp_path / key / "config.yaml").exists()


@pytest.mark.parametrize("tool", ["collapse", "posthoc_ema", "sampler_fid"])
def test_argparse_tools_refuse_integers_out_of_range_with_exit_2(tool, capsys):
    parser = importlib.import_module(f"diffusion.tools.{tool}").build_parser()
    for bad in ("0", "-3", "abc"):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(["x", "--n", bad])
        assert info.value.code == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("error: argument --n:"), err  # one line, as the entry points
    assert parser.parse_args(["x", "--n", "64"]).n == 64


def test_an_omegaconf_validation_error_is_one_line_naming_its_key(capsys):
    """OmegaConf's own messages are several lines (message, full_key, object_type): one line, key first."""
    from dataclasses import dataclass

    from omegaconf import OmegaConf

    from diffusion.tools.cli import reports_user_errors

    @dataclass
    class Settings:
        steps: int = 10

    def assign() -> None:
        OmegaConf.structured(Settings).steps = "abc"

    with pytest.raises(SystemExit) as info:
        reports_user_errors(assign)()
    lines = capsys.readouterr().err.splitlines()
    assert info.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: steps: ") and "'abc'" in lines[0], lines
