"""Build a reduced SD1.5-architecture checkpoint (~300 MB fp16, random weights) that real ComfyUI detects as SD15.

Run with the ComfyUI checkout's own venv: `python make_reduced_sd15_checkpoint.py COMFY_DIR OUT.safetensors`.
ComfyUI matches SD15 on `context_dim` 768 and `model_channels` 320 only (comfy/supported_models.py `SD15`), so a
UNet with one level passes; the text encoder is ComfyUI's own CLIP-L class and the VAE its TAESD.
"""

from __future__ import annotations

import importlib
import sys


def main(comfy_dir: str, out: str) -> None:
    import torch
    from safetensors.torch import save_file

    sys.argv = [sys.argv[0], "--cpu"]  # comfy.model_management reads the CLI: stay off CUDA
    sys.path.insert(0, comfy_dir)
    importlib.import_module("comfy.options").enable_args_parsing()
    ops = importlib.import_module("comfy.ops").disable_weight_init
    unet_model = importlib.import_module("comfy.ldm.modules.diffusionmodules.openaimodel").UNetModel
    clip_model = importlib.import_module("comfy.sd1_clip").SDClipModel
    taesd = importlib.import_module("comfy.taesd.taesd").TAESD

    unet = unet_model(
        image_size=32,
        in_channels=4,
        out_channels=4,
        model_channels=320,
        num_res_blocks=[1],
        channel_mult=[1],
        transformer_depth=[1],
        transformer_depth_output=[1, 1],
        transformer_depth_middle=1,
        num_heads=8,
        num_head_channels=-1,
        use_spatial_transformer=True,
        context_dim=768,
        use_linear_in_transformer=False,
        legacy=False,
        dtype=torch.float32,
        operations=ops,
        device="cpu",
    )
    parts = {
        "model.diffusion_model.": unet,
        "cond_stage_model.": clip_model(device="cpu", dtype=torch.float32),
        "first_stage_model.": taesd(),
    }
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for prefix, module in parts.items():
        for key, value in module.state_dict().items():
            name = prefix + key
            if not value.is_floating_point():
                tensors[name] = value.contiguous()
            elif key.endswith("bias"):
                tensors[name] = torch.zeros_like(value).half()
            elif "norm" in key and key.endswith("weight"):
                tensors[name] = torch.ones_like(value).half()
            else:
                tensors[name] = (torch.randn(value.shape, generator=generator) * 0.02).half()
    save_file(tensors, out)
    print(f"{len(tensors)} tensors, {sum(t.numel() for t in tensors.values()) / 1e6:.1f} M parameters -> {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
