"""Kept for old commands: `python scripts/export_bundle.py --bundle-root <bundle>` is
`fpt-monai export --bundle-root <bundle>` (fpt_monai.commands.export; the work is fpt_monai.export.export_bundle)."""

import sys

from fpt_monai.commands.export import main

if __name__ == "__main__":
    from fpt_monai.utils.errors import install_excepthook

    install_excepthook()  # our one-line error after the traceback
    sys.exit(main())
