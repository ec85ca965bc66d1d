"""What both sides of a federation need: the base model, adapter templates, data, training."""
