"""Benchmarks behind every speed and memory figure in docs/benchmarks.md, each runnable as
``python -m fpt_monai.benchmarks.<name>`` and used by ``python -m fpt_monai.check``:

- ``training_cost``: trainable parameters, peak training memory and speed of FPT, FPT+ and the baselines;
- ``resolution``: the same at 512-2048 px input (tokens, k, preload, store size, FPT+ and full fine-tuning);
- ``preload_speed``: preload throughput and the store's read speed;
- ``precision``: preload in fp32/bf16/fp16 against a bare timm forward, and token agreement with fp32;
- ``epoch``: training epochs through the bundle from a real feature store, resident copy on and off;
- ``importance``: the frozen extractor's token importance against a bare forward at high resolution.
"""
