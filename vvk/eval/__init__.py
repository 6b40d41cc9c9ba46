"""Evaluation protocols: clip retrieval and linear probe for video backbones."""
