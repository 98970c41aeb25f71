"""Build FPT and FPT+ on the offline ViT-S/14 DINOv2 weights (random weights if ../shared is absent), print their
parameter accounting and classify one random image. Used by `make demo` until the bundle demo lands."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from fpt_monai.networks import FPT, count_parameters

WEIGHTS = Path(__file__).resolve().parents[2] / "shared/data/vit_small_patch14_dinov2_imgfocus"
WEIGHTS = WEIGHTS / "vit_small_patch14_dinov2_imgfocus.fp16.safetensors"


def main() -> None:
    pretrained = str(WEIGHTS) if WEIGHTS.is_file() else False
    print(f"LPM weights: {pretrained or 'random (../shared not found)'}")
    image = torch.randn(1, 3, 518, 518)
    for variant, side in (("fpt", 224), ("fpt_plus", 126)):
        net = FPT(
            num_classes=2,
            variant=variant,
            backbone="vit_small_patch14_dinov2",
            pretrained=pretrained,
            img_size=518,
            side_img_size=side,
        ).eval()
        start = time.perf_counter()
        with torch.no_grad():
            probs = net(image).softmax(-1)
        print(
            f"{variant:9s} {count_parameters(net)}; tokens per image {net.token_shape}; "
            f"p = {probs.squeeze().tolist()} in {time.perf_counter() - start:.2f} s"
        )


if __name__ == "__main__":
    main()
