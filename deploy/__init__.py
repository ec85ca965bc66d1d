"""The federation on Flower's Deployment Engine: a SuperLink and SuperNodes as processes."""
