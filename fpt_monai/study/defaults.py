"""The study's default data, weights and learning-rate grids (standard library only: the command line's parser
reads them before anything heavy is imported)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_LRS", "DINOV2_WEIGHTS", "ISIC_COLUMNS", "ISIC_CSV", "METHOD_LRS", "SHARED"]

# the shared data beside a clone (the layout of the project's machines), relative to the current directory: an
# installed package has no clone to find it from, and the documented commands run from the clone's root
SHARED = Path("..") / "shared" / "data"
ISIC_CSV = SHARED / "isic_uda1" / "labels.csv"
ISIC_COLUMNS = {
    "path_column": "isic_id",
    "label_column": "label",
    "path_format": "images/{}.jpg",
    "class_names": "benign,malignant",
}
DINOV2_WEIGHTS = SHARED / "vit_small_patch14_dinov2_imgfocus" / "vit_small_patch14_dinov2_imgfocus.fp16.safetensors"
DEFAULT_LRS = "1e-3,3e-4"
METHOD_LRS = {
    "linear_probe": "1e-2,1e-3",
    "linear_probe_online": "1e-2,1e-3",
    "full_finetune": "1e-5,3e-6",
    "full_finetune_checkpointing": "1e-5,3e-6",
}
