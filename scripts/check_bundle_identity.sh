#!/usr/bin/env bash
# A trained bundle's identity end to end (issue 19): a 518 px, 3-class FPT+ bundle (DINOv2 ViT-S/14 from ../shared)
# from a class-folder tree of generated images, then MONAI's verify_metadata / verify_net_in_out / ckpt_export with no
# shape override, `make export BUNDLE=...` and Deploy; prints the run id and checkpoint SHA-256 each of them carries,
# and the time of each step. ~5 minutes on 2 CPU cores.   bash scripts/check_bundle_identity.sh [work folder]
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
PY=.venv/bin/python
W=$(realpath -m "${1:-/tmp/fpt_identity_check}")
rm -rf $W/images $W/runs $W/dicom $W/out
$PY - <<PY
import numpy as np
from pathlib import Path
from PIL import Image
from fpt_monai.data.demo import synthetic_image, write_dicom
root = Path("$W/images")
for c, name in enumerate(("benign", "malignant", "normal")):
    (root / name).mkdir(parents=True)
    for i in range(10):
        g = synthetic_image(min(c, 1), 518, seed=100 * c + i)
        if c == 2:
            g = g[::-1].copy()
        Image.fromarray((np.clip(g, 0, 1) * 255).astype(np.uint8)).convert("RGB").save(root / name / f"{i}.png")
for i, png in enumerate(sorted(root.glob("*/0.png")) + sorted(root.glob("*/1.png"))):
    g = np.asarray(Image.open(png).convert("L")).astype(np.uint16) * 16
    write_dicom(Path("$W/dicom") / f"{i}.dcm", g, study_uid="1.2.826.0.1.3680043.8.498.901", series_uid="1.2.826.0.1.3680043.8.498.902")
PY
WEIGHTS=../shared/data/vit_small_patch14_dinov2_imgfocus/vit_small_patch14_dinov2_imgfocus.fp16.safetensors
t() { local s=$(date +%s); "$@"; echo "TIME $(( $(date +%s) - s )) s: ${*:1:6}"; }
t $PY -m fpt_monai.data.datalist $W/images
t $PY -m monai.bundle run training \
    --config_file "['bundle/configs/train.yaml','configs/backbones/dinov2_s14.yaml','configs/recipes/small_data.yaml']" \
    --bundle_root $W/runs/my_fpt --dataset_dir $W/images --pretrained $WEIGHTS --tracking mlflow --epochs 5 2>&1 | tail -3
B=$W/runs/my_fpt
t $PY -m monai.bundle run --config_file "['bundle/configs/train.yaml','bundle/configs/evaluate.yaml']" --bundle_root $B --tracking mlflow 2>&1 | tail -2
t $PY -m monai.bundle verify_metadata --meta_file $B/models/metadata.json --filepath bundle/schema/meta_schema_20240725.json 2>&1 | tail -1
t $PY -m monai.bundle verify_net_in_out network_def --meta_file $B/models/metadata.json --config_file bundle/configs/inference.yaml --bundle_root $B 2>&1 | tail -1
t $PY -m monai.bundle ckpt_export network_def --filepath $B/models/model_cli.ts --ckpt_file $B/models/model.pt --meta_file $B/models/metadata.json --config_file bundle/configs/inference.yaml --bundle_root $B --use_trace True 2>&1 | tail -1
t make export BUNDLE=$B 2>&1 | tail -6
t $PY -m fpt_monai.deploy -i $W/dicom -o $W/out -m $B/models/model.ts 2>&1 | tail -2
$PY - <<PY
import json, onnx, mlflow, pydicom
from pathlib import Path
from fpt_monai.data.feature_store import file_sha256
from fpt_monai.deploy import ExportedFPT
m = Path("$W/runs/my_fpt/models")
run = json.loads((m / "mlflow_run.json").read_text())
meta = json.loads((m / "metadata.json").read_text())
print("run id (mlflow_run.json):", run["run_id"])
print("model.pt sha256          :", file_sha256(m / "model.pt"))
print("metadata.json            :", meta["fpt_monai"]["run_id"], meta["fpt_monai"]["checkpoint_sha256"], meta["network_data_format"]["inputs"]["image"]["spatial_shape"], meta["network_data_format"]["outputs"]["pred"]["channel_def"])
print("model_cli.ts (ckpt_export):", ExportedFPT(m / "model_cli.ts").identity)
print("model.ts (make export)   :", ExportedFPT(m / "model.ts").identity)
props = {p.key: p.value for p in onnx.load(str(m / "model.onnx")).metadata_props}
print("ONNX metadata_props      :", props["run_id"], props["checkpoint_sha256"], props["class_names"], props["input_size"])
tags = mlflow.MlflowClient(tracking_uri=run["tracking_uri"]).get_run(run["run_id"]).data.tags
print("MLflow tag               :", tags.get("fpt.checkpoint_sha256"))
out = json.loads(Path("$W/out/output.json").read_text())
print("output.json model        :", out["model"], out["counts"])
sr = next(Path("$W/out").glob("*.dcm"))
print("SR text:\n" + pydicom.dcmread(sr).ContentSequence[0].TextValue)
PY
