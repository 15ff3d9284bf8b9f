"""Figure 7: peak memory (RSS, MiB) of each training configuration, each in its own process so peaks never mix.

The configurations of figure 3 (``worker step_memory``: load, build, a warm-up step and 2 more) and the two runs of
figures 4-5 (``loraplus train`` defaults and the bare script, whole runs). The peak is the process's own
``getrusage(RUSAGE_SELF).ru_maxrss``; the RSS right after the imports (the same libraries on every side) is recorded
as the baseline. Ratios are reported (no targets were set).
"""

from __future__ import annotations

from benchmarks.common import Context, row, run_worker, skipped_row
from benchmarks.fig_train_runs import train_runs
from benchmarks.fig_train_step import VARIANTS

NAME = "peak_memory"
TITLE = "7 peak memory"


def config(quick: bool) -> dict:
    from benchmarks import fig_train_runs

    models = ["tiny-bert"] if quick else ["minilm-l6", "smollm2-135m"]
    return {"models": models, "steps": 2, "train_runs": fig_train_runs.config(quick)}


def _mib(r: dict) -> str:
    return f"{r['peak_rss_mib']:.0f} MiB (+{r['peak_rss_mib'] - r['baseline_rss_mib']:.0f} over imports)"


def run(ctx: Context, cfg: dict) -> dict:
    from benchmarks.common import smollm2_path

    rows, data = [], {}
    for kind in cfg["models"]:
        if kind == "smollm2-135m" and smollm2_path()[0] is None:
            rows.append(skipped_row(f"{kind}: loraplus / PEFT LoRA + AdamW peak RSS", smollm2_path()[1]))
            continue
        peaks = {}
        for variant in VARIANTS:
            ctx.log(f"[{NAME}] {kind} {variant}")
            peaks[variant] = run_worker("step_memory", {"kind": kind, "variant": variant, "steps": cfg["steps"]}, ctx)
        data[kind] = peaks
        lp = peaks["loraplus"]["peak_rss_mib"]
        rows.append(row(f"{kind}: loraplus / PEFT LoRA + AdamW peak RSS", ratio=lp / peaks["peft_adamw"]["peak_rss_mib"],
                        value=f"{_mib(peaks['loraplus'])} vs {_mib(peaks['peft_adamw'])}"))  # fmt: skip
        rows.append(row(f"{kind}: loraplus / full fine-tuning peak RSS", ratio=lp / peaks["full"]["peak_rss_mib"],
                        value=f"full FT {_mib(peaks['full'])}"))  # fmt: skip
    runs = train_runs(ctx, cfg["train_runs"])
    data["train_runs"] = {who: {k: r[k] for k in ("baseline_rss_mib", "peak_rss_mib")} for who, r in runs.items()}
    rows.append(row("loraplus train / bare script peak RSS", ratio=runs["loraplus"]["peak_rss_mib"] / runs["bare"]["peak_rss_mib"],
                    value=f"{_mib(runs['loraplus'])} vs {_mib(runs['bare'])}"))  # fmt: skip
    return {"rows": rows, "data": data}
