"""Evaluate: score a base model and fine-tuned variants on held-out data and write a report."""
