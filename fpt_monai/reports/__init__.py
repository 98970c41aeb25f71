"""Reports on trained bundles: :mod:`~fpt_monai.reports.summary` (what a trained bundle holds, and DeLong's paired
test of two bundles on the same test images; the command line is ``fpt-monai summary``)."""
