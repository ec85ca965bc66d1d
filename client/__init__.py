"""The device side: a Flower ClientApp that trains adapter weights on local data."""
