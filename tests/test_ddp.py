"""Lightning DDP for real: two CPU processes (gloo) through train.py under Hydra."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import describe, run_script, write_sprites

# A callback the test injects with +callbacks.*: every rank records what it trained on and what it ended with.
PROBE = textwrap.dedent(
    '''
    import hashlib, json
    from pathlib import Path
    import lightning as L


    class RankProbe(L.Callback):
        def __init__(self, out):
            self.out, self.batches = Path(out), []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.batches.append(hashlib.sha1(batch[0].cpu().numpy().tobytes()).hexdigest())

        def on_train_end(self, trainer, pl_module):
            digest = hashlib.sha1()
            for name, tensor in sorted(pl_module.state_dict().items()):
                digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
            self.out.mkdir(parents=True, exist_ok=True)
            record = {"world_size": trainer.world_size, "batches": self.batches, "weights": digest.hexdigest()}
            (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
    '''
)


@pytest.mark.slow
def test_two_process_ddp_run(tmp_path: Path):
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "rank_probe.py").write_text(PROBE)
    data, run, ranks = write_sprites(tmp_path / "sprites"), tmp_path / "run", tmp_path / "ranks"
    proc = run_script(
        "train.py",
        "data=sprites",
        f"data.dir={data}",
        "data.batch_size=16",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"hydra.run.dir={run}",
        "+callbacks.probe._target_=rank_probe.RankProbe",
        f"+callbacks.probe.out={ranks}",
        env={"PYTHONPATH": str(tmp_path / "probe")},
        timeout=600,
    )
    assert proc.returncode == 0, describe(proc)

    records = [json.loads((ranks / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in records)
    # Each process trained on its own shard, and DDP kept the weights in step.
    assert records[0]["batches"] and not set(records[0]["batches"]) & set(records[1]["batches"])
    assert records[0]["weights"] == records[1]["weights"]

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 4 and all(abs(metrics[k]) < 1e6 for k in ("train/loss", "val/loss"))
    # Hydra made one run directory (the child process reuses it, without a .hydra/ of its own); only
    # rank 0 wrote the run's files.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe", "ranks", "run", "sprites"]
    assert sorted(p.name for p in (run / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    # Event files are named events.out.tfevents.<time>.<host>.<pid>.<n>: one process wrote them all (the final
    # HParams session may reopen the writer after fit, so there can be two files of the same process).
    events = list((run / "tensorboard").glob("events.*"))
    assert events and len({path.name.split(".")[-2] for path in events}) == 1, [p.name for p in events]
    assert len(list(run.rglob("metrics.csv"))) == 1 and len(list(run.rglob("final.safetensors"))) == 1
