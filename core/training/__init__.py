"""Local training: data partitions, the job a round asks for, the training loop."""
