"""The commands of fpt-monai: one light module per command (argument parser; the work imported after parsing)."""
