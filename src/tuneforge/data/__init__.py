"""Data: read user files in the common formats, validate, clean, split (the prepare stage)."""
