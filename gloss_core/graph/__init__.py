"""The batch graph behind G-Loss: Gaussian affinity, transition matrix and closed-form label
propagation (`propagation`), the kernel width sigma (`sigma`), and the label mask (`masking`)."""

from gloss_core.graph.masking import LabelMask, sample_labeled_mask
from gloss_core.graph.propagation import (LEAK, Sigma, check_labels, gaussian_affinity, propagate_labels,
                                          squared_distances, transition_matrix, unit_rows)
from gloss_core.graph.sigma import (BatchSqrtSigma, FixedSigma, ScaledSigma, SigmaStrategy, dicm_sigma, make_sigma,
                                    scaled_sigma, sqrt_rule_sigma)

__all__ = [
    "LEAK", "BatchSqrtSigma", "FixedSigma", "LabelMask", "ScaledSigma", "Sigma", "SigmaStrategy", "check_labels",
    "dicm_sigma", "gaussian_affinity", "make_sigma", "propagate_labels", "sample_labeled_mask", "scaled_sigma",
    "sqrt_rule_sigma", "squared_distances", "transition_matrix", "unit_rows",
]
