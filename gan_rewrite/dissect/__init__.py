"""GAN dissection and GANPaint: which units of a layer draw which concept, and editing with them.

* :mod:`.units` — a layer's units (its output channels = the next layer's inputs);
* :mod:`.quantiles` — per-unit activation quantiles over samples (streamed, cached, torchrun-aware);
* :mod:`.concepts` — unit ↔ concept IoU against segmenter labels or painted masks, ranked units;
* :mod:`.edits` — switching units off as a rule (``D = e_u`` on the next layer), painting them at run time;
* :mod:`.report` — the static HTML report of ``gan-rewrite dissect``.
"""

from .concepts import Dissection, PaintedConcepts, SegmenterConcepts, dissect
from .edits import ablate, ablation_rule, paint
from .quantiles import UnitQuantiles, compute_quantiles
from .units import next_layer, unit_activations, unit_count

__all__ = [
    "Dissection", "PaintedConcepts", "SegmenterConcepts", "UnitQuantiles", "ablate", "ablation_rule",
    "compute_quantiles", "dissect", "next_layer", "paint", "unit_activations", "unit_count",
]
