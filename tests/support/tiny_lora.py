"""Write a LoRA adapter for the tiny Llama (tiny_llama.py) in PEFT's layout, as vLLM
reads it: run with the vLLM virtualenv's Python (it has torch and safetensors),
`python tiny_lora.py BASE_DIR OUT_DIR SEED`.

adapter_config.json says `peft_type` LORA, the rank `r`, `lora_alpha` and the target
modules (q_proj, v_proj); adapter_model.safetensors holds, for each layer N and each
target, `base_model.model.model.layers.N.self_attn.<target>.lora_A.weight` (r x hidden)
and `lora_B.weight` (hidden x r). The weights are random (seeded) and large enough that
the adapter's greedy answer differs from the base's, and from another seed's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

RANK = 8
TARGETS = ("q_proj", "v_proj")


def write_adapter(base: Path, out: Path, seed: int) -> None:
    """An adapter of rank RANK for the model in `base`, into `out`."""
    config = json.loads((base / "config.json").read_text())
    hidden, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
    heads_kv = int(config.get("num_key_value_heads", config["num_attention_heads"]))
    head = hidden // int(config["num_attention_heads"])
    outputs = {"q_proj": hidden, "v_proj": heads_kv * head}
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(layers):
        for target in TARGETS:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(RANK, hidden, generator=generator).mul(
                0.5
            )
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(
                outputs[target], RANK, generator=generator
            ).mul(0.5)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base),
        "r": RANK,
        "lora_alpha": 2 * RANK,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": list(TARGETS),
        "fan_in_fan_out": False,
    }
    (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=1))


def main() -> None:
    """Write the adapter the command line names."""
    write_adapter(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
    print(sys.argv[2])


if __name__ == "__main__":
    main()
