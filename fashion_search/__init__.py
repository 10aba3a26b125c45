"""Fashion visual search: ResNet50 embeddings and exact nearest neighbours over a product catalogue."""

__version__ = "0.1.0"
