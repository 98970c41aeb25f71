# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The choices a feature store is made with, by name: the dtypes it stores tokens in, the fields an item can have, and
the frozen model's compute precisions.

Names only, without numpy or torch, so that a command's argument parser offers them as choices (``--dtype``,
``--precision``) without importing either; :mod:`fpt_monai.data.feature_store` and :mod:`fpt_monai.data.preload`
re-export them and give them their meaning.
"""

from __future__ import annotations

__all__ = ["POOLED", "PRECISION_NAMES", "STORE_DTYPES", "STORE_FIELDS", "TOKENS"]

# the dtypes the tokens can be stored in
STORE_DTYPES = ("float16", "bfloat16", "float32")
# an item's fields: its tokens (always stored) and the frozen model's pooled features (a linear probe, hybrid head)
TOKENS = "tokens"
POOLED = "pooled"
STORE_FIELDS = (TOKENS, POOLED)
# the frozen model's compute precisions during preload (fp32: without autocast)
PRECISION_NAMES = ("fp32", "bf16", "fp16")
