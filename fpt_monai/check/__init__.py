"""``python -m fpt_monai.check``: one command that measures every speed and memory claim of FPT/FPT+ on the device
given (a GPU by default when present) and writes ``check_report.json`` and ``check_report.md``.

Sections (each in its own process, with a time budget, so that a crash or a hang costs only its own figures):

- ``paper_benchmark``: the papers' setting (ViT-B/16 at 512 px, batch 16): peak training memory, step time and
  throughput of FPT+, FPT and full fine-tuning with fused (SDPA) and eager attention, as ratios from one run;
- ``preload_precision``: the frozen model's preload in fp32/bf16/fp16 against a bare timm forward in the same
  precision, and the selected tokens' agreement with fp32;
- ``bundle``: the bundle itself on generated demo data: preload through the bundle, FPT+ training epochs from the
  feature store with the resident copy off and on, TorchScript/ONNX export and their agreement with PyTorch on the
  device, and MONAI Deploy on the demo DICOM study;
- ``resolution``: the resolution sweep (512-2048 px): tokens, k, preload against a bare forward, store bytes per
  item, FPT+ and full fine-tuning memory and time.

``--device cpu --tiny`` runs the same code on a tiny model in seconds (a test of ``make test``), so the command
cannot rot between the rare runs on a GPU. Every figure of the issues' targets (issue 21) is in the report, with
PASS/FAIL where the target applies to the device (e.g. throughput targets on an H100-class card).
"""
