"""SITT: single-image texture translation (Li et al., ECCV-W 2022; ``Boyiliee/SITTA``): the
losses of its training step. The networks are ``vvk.models.texture`` (registry name ``sitt``)."""
