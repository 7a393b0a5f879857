"""Train: fine-tune a base model on a prepared dataset (the train stage)."""
