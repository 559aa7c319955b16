"""LoRA through peft, injected in place into SAM2 submodules.

`inject_adapter_in_model` wraps the targeted `nn.Linear` layers and leaves the module's class and
forward untouched, so the LoRA-adapted encoder is still transformers' `Sam2VisionModel`.
"""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

# Hiera's fused query-key-value projection in every block.
ENCODER_TARGETS = r".*blocks\.\d+\.attn\.qkv"
# The two-way transformer of SAM's mask decoder: self- and cross-attention projections.
DECODER_TARGETS = r".*transformer\..*(self_attn|cross_attn_token_to_image|cross_attn_image_to_token|final_attn_token_to_image)\.(q_proj|k_proj|v_proj|o_proj)"


def add_lora(module: nn.Module, *, target_modules: str, rank: int, alpha: float, dropout: float = 0.0) -> nn.Module:
    """Inject LoRA (rank, alpha) into the linear layers of `module` whose names match `target_modules`."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    # peft annotates lora_alpha as int but only divides it by the rank: a float alpha (BuildOptions) works.
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none"
    )
    return inject_adapter_in_model(config, module)


def is_lora_parameter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def merged_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module`'s state with every LoRA update folded into its linear layer, under the keys the module
    had before LoRA was injected (peft's ``base_layer`` wrapper and the LoRA tensors gone).

    `module` itself is left as it is: the merge happens on a copy.
    """
    plain = copy.deepcopy(module)
    for layer in plain.modules():
        if isinstance(layer, LoraLayer) and not layer.merged:
            layer.merge()
    return {
        key.replace(".base_layer.", "."): value.detach().contiguous().cpu()
        for key, value in plain.state_dict().items()
        if not is_lora_parameter(key)
    }
