# Copyright (c) fpt_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
# with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""``python -m fpt_monai.deploy -i dicom_dir -o out -m model.ts``; also the entry point of a packaged MAP."""

import sys

from fpt_monai.deploy.app import main

if __name__ == "__main__":
    sys.exit(main())
