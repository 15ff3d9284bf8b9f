#!/usr/bin/env bash
# GPU check (needs a CUDA GPU with bitsandbytes; CI never runs it): bf16 + 4-bit QLoRA + gradient checkpointing on
# smollm2-135m for a few steps. Prints lr_B / lr_A at every step, whether every lora_B moved, and the peak GPU
# memory; writes benchmarks/gpu_check.json. Usage: bash benchmarks/gpu_check.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
"$PY" -m pip install --quiet "bitsandbytes>=0.45" >/dev/null
"$PY" - <<'PYEOF'
import json, subprocess, tempfile, torch
from pathlib import Path
from safetensors.torch import load_file
from transformers import TrainerCallback
from loraplus.config import TrainConfig
from loraplus.train import run_train

class Record(TrainerCallback):
    def __init__(self): self.ratios = []
    def on_step_end(self, args, state, control, optimizer=None, **kw):
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        if lrs.get("lora_A", 0) > 0: self.ratios.append(lrs["lora_B"] / lrs["lora_A"])

out = Path(tempfile.mkdtemp()) / "run"
record = Record()
torch.cuda.reset_peak_memory_stats()
cfg = TrainConfig(task="sft", output_dir=str(out), max_steps=6, eval_steps=6, eval_generate=2, bf16=True,
                  load_in_4bit=True, gradient_checkpointing=True, device="cuda", loraplus_lr_ratio=16)
metrics = run_train(cfg, callbacks=[record])
b = {k: v for k, v in load_file(out / "adapter" / "adapter_model.safetensors").items() if "lora_B" in k}
result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
          "nvidia_smi": subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip(),
          "ratios": record.ratios, "ratio_ok": all(abs(r - 16) < 1e-9 for r in record.ratios) and len(record.ratios) >= 5,
          "lora_B_moved": all(v.abs().sum().item() > 0 for v in b.values()), "num_lora_B": len(b),
          "peak_gpu_memory_mib": torch.cuda.max_memory_allocated() / 2**20, "metrics": metrics,
          "hardware": json.loads((out / "config.json").read_text())["hardware"]}
Path("benchmarks/gpu_check.json").write_text(json.dumps(result, indent=2))
print(json.dumps({k: v for k, v in result.items() if k != "metrics"}, indent=2))
PYEOF
