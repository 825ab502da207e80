"""Model transforms: any model made quadratic (``quadratize``), quadratic neurons written as plain layers made
quadexport layers (``adopt``), the torch.fx matching and rewrite behind it, the layer selection, and the replay of
every recorded spec (quadratize, adopt, compress) on a fresh build (:func:`create_model`)."""

from quadexport.transforms.build import create_model

__all__ = ["create_model"]
