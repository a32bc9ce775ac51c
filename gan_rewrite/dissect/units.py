"""Units of a layer: the channels of its output, which are the input channels (keys) of the next layer.

"Unit ``u`` of ``layer``" is channel ``u`` of the feature map ``layer`` hands on; the library reads it as the
state entering the next named layer (``G.forward_to(next_layer).features``), after the layer's nonlinearity.
That is also where a unit is switched off (a rule on the next layer, :mod:`.edits`) or painted.

Two things differ between architectures and are worth knowing:

* DCGAN / ProGAN: the next layer's key *is* the feature map, so zeroing its input column ``u`` is exactly
  switching unit ``u`` off.
* StyleGAN2: the next layer's key is ``x·s`` (features times the sample's style), so zeroing unit ``u`` of
  ``x`` is still ``D = e_u`` in key space; but the next conv's demodulation is recomputed from the edited
  weight (it grows a little as a column is removed), and on ``layer1, layer3, …`` the layer's own to-RGB also
  reads the features. Prefer the upsampling layers ``layer2, layer4, …`` for dissection on StyleGAN2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..errors import LayerError

if TYPE_CHECKING:
    from ..models.base import GANGenerator, LayerState


def next_layer(G: GANGenerator, layer: str) -> str:
    """The named layer that reads ``layer``'s units.

    Raises:
        LayerError: ``layer`` is unknown, or is the last layer (its output is the image, not units).
    """
    names = G.layer_names
    index = G.layer_index(layer)
    if index + 1 >= len(names):
        raise LayerError(
            f"{layer!r} is the last layer of {type(G).__name__}: its output is the image, so it has no units to "
            f"dissect or switch off; pick one of {names[:-1]}."
        )
    return names[index + 1]


def has_side_output(G: GANGenerator, layer: str) -> bool:
    """Whether something besides the next layer reads ``layer``'s units (StyleGAN2's to-RGB on odd layers)."""
    return G.config.architecture == "stylegan2" and G.layer_index(layer) % 2 == 0


def unit_count(G: GANGenerator, layer: str) -> int:
    """How many units ``layer`` has (the input channels of the next layer)."""
    from ..rewrite.layers import layer_kind

    module = G.layer_module(next_layer(G, layer))
    return layer_kind(module).shape(module.weight)[1]


@torch.no_grad()
def state_after(G: GANGenerator, layer: str, seeds: Sequence[int], truncation: float | None = None) -> LayerState:
    """The state entering the layer after ``layer`` for ``seeds``; its ``features`` are the units ``(N, C, h, w)``."""
    seeds = [int(s) for s in seeds]
    return G.forward_to(
        next_layer(G, layer), G.make_latents(seeds), truncation, noise=G.make_noise(seeds)
    )


def unit_activations(G: GANGenerator, layer: str, seeds: Sequence[int], truncation: float | None = None) -> Tensor:
    """The units of ``layer`` for ``seeds``: ``(N, C, h, w)`` float32 on the model's device."""
    return state_after(G, layer, seeds, truncation).features.float()
