"""The bench's result as rows and ratios for the JSON, and as the text tables it prints."""

from __future__ import annotations

import statistics

from diffusion.tools.throughput.measure import DDPM_LEVELS, Contender, Plan
from diffusion.tools.throughput.operators import fastest_naive
from diffusion.tools.throughput.sampler_timing import SamplingJob

MiB = 2**20


def training_rows(contenders: list[Contender], train_flops: float, rates: dict[str, float]) -> list[dict]:
    rows = []
    for c in contenders:
        achieved = train_flops * c.rate
        rows.append({
            "name": c.name,
            "precision": c.precision,
            "steps_per_chunk": c.chunk,
            "images_per_s": round(c.rate, 2),
            "images_per_s_reps": [round(r, 2) for r in c.rates],
            "peak_memory_mib": round(max(c.peaks) / MiB, 1),
            "achieved_flop_per_s": achieved,
            "fraction_of_matmul_rate": achieved / rates[c.precision],
        })
    return rows


def paired_ratio(a: Contender, b: Contender) -> float:
    """Median over turns of a's rate over b's in the same turn: load that lasts a turn cancels out."""
    return statistics.median(x / y for x, y in zip(a.rates, b.rates))


def training_ratios(contenders: list[Contender]) -> dict:
    ours, raw = contenders[0], contenders[1]
    naive = fastest_naive(contenders)
    return {
        "ours_over_naive": paired_ratio(ours, naive),
        "naive_used": naive.name,
        "ours_over_raw": paired_ratio(ours, raw),
    }


def sampling_rows(jobs: list[SamplingJob], plan: Plan) -> list[dict]:
    rows = []
    for job in jobs:
        row = {"sampler": job.name, "steps": job.steps, "nfe": job.nfe}
        for precision, rates in job.rates.items():
            row[f"images_per_s_{precision}"] = round(statistics.median(rates), 3)
        if job.scale != 1:
            row["timed_levels"] = plan.ddpm_timed_levels
        rows.append(row)
    return rows


def format_training(result: dict) -> list[str]:
    t = result["training"]
    lines = [
        f"training: batch {t['batch']}, {t['reps']} turns of a chunk of steps each, median images/s "
        f"(min..max over turns); peak memory: {t['memory_method']}",
        f"  {'contender':<30} {'prec':>5} {'steps':>5} {'img/s':>8} {'min..max':>13} {'ms/step':>8} "
        f"{'peak MiB':>8} {'GFLOP/s':>8} {'of matmul':>9}",
    ]
    for r in t["rows"]:
        ms = 1e3 * t["batch"] / r["images_per_s"]
        spread = f"{min(r['images_per_s_reps']):.0f}..{max(r['images_per_s_reps']):.0f}"
        lines.append(
            f"  {r['name']:<30} {r['precision']:>5} {r['steps_per_chunk']:>5} {r['images_per_s']:8.1f} {spread:>13} "
            f"{ms:8.0f} {r['peak_memory_mib']:8.0f} {r['achieved_flop_per_s'] / 1e9:8.1f} "
            f"{r['fraction_of_matmul_rate']:9.1%}"
        )
    ratios = t["ratios"]
    lines.append(
        f"  ours / naive = {ratios['ours_over_naive']:.2f}x (vs {ratios['naive_used']}, the faster naive); "
        f"ours / raw = {ratios['ours_over_raw']:.2f} (data path + Lightning); both medians of per-turn ratios"
    )
    if "convolutions" in t:
        c = t["convolutions"]
        spent = ", ".join(f"{name} {v['convolution_ms']:.0f} of {v['all_ops_ms']:.0f} ms" for name, v in c["profiled"].items())
        lines.append(
            f"  convolutions per step (forward + backward): {spent}; naive step {c['naive_ms']:.0f} ms: with every "
            f"other operator free, ours / naive <= {c['ours_over_naive_bound']:.2f}x"
        )
        for name, v in c["profiled"].items():
            lines.append(f"    {name} top operators, ms/step: " + ", ".join(f"{op} {ms:.1f}" for op, ms in v["top_ops_ms"].items()))
    if "skipped" in t:
        lines.append(f"  {t['skipped']}")
    return lines


def format_sampling(result: dict) -> list[str]:
    s = result["sampling"]
    precisions = s["precisions"]
    lines = [
        f"sampling: batch {s['batch']}, inference_mode, {s['reps']} repetitions, median images/s; "
        f"DDPM timed over {s['ddpm_timed_levels']} of its {DDPM_LEVELS} levels and scaled",
        f"  {'sampler':<10} {'steps':>5} {'NFE':>5} " + " ".join(f"{'img/s ' + p:>11}" for p in precisions)
        + (f" {'bf16/fp32':>9}" if len(precisions) == 2 else ""),
    ]
    for r in s["rows"]:
        cells = " ".join(f"{r[f'images_per_s_{p}']:11.2f}" for p in precisions)
        ratio = f" {r['images_per_s_bf16'] / r['images_per_s_32']:9.2f}" if len(precisions) == 2 else ""
        lines.append(f"  {r['sampler']:<10} {r['steps']:>5} {r['nfe']:>5} {cells}{ratio}")
    return lines


def cpu_taken(share: float | None) -> str:
    return "unknown" if share is None else f"{share:.0%}"


def format_report(result: dict) -> str:
    m, f = result["machine"], result["flops"]
    head = [
        f"diffusion.tools.throughput: model={result['model']} ({result['parameters'] / 1e6:.2f}M parameters), "
        f"precision {result['precision']}, channels_last {result['channels_last']}, compile {result['compile']}",
        f"machine: {m['device']} ({m['device_name']}), {m['cpu_cores']} CPU cores, torch {m['torch']}, "
        f"{m['threads']} threads, commit {m['commit']}, "
        f"load average {m['load_average_start']} -> {m['load_average_end']}, "
        f"{cpu_taken(m['cpu_share_taken_by_others'])} of the CPU time taken by other processes during the run"
        + (f", TF32 matmul {m['matmul_tf32']} cuDNN {m['cudnn_tf32']}" if "matmul_tf32" in m else ""),
        f"model: {f['forward_per_image'] / 1e9:.3f} GFLOP per image forward (FlopCounterMode), training taken as 3x; "
        f"matmul {f['matmul_size']}^2 (timed in the training turns): fp32 {f['matmul_rate']['32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {f['matmul_rate']['bf16'] / 1e9:.0f} GFLOP/s",
    ]
    return "\n".join(head + format_training(result) + format_sampling(result) + [f"total {result['seconds']:.0f} s"])
