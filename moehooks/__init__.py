"""moehooks: read and steer the routers of Mixture-of-Experts models in Hugging Face transformers."""

__version__ = "0.1.0"
