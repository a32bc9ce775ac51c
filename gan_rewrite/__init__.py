"""gan-rewrite: rewrite the rules of pretrained GANs and share the rewrites on the Hugging Face Hub."""

__version__ = "0.1.0"
