"""Per-view likelihoods: re-exported from the ground-floor `mvimpute.likelihoods`."""

from ..likelihoods import (  # noqa: F401
    BINARY_LIKELIHOODS,
    BOUNDS,
    COUNT_LIKELIHOODS,
    LIKELIHOODS,
    LOGVAR_FLOOR,
    N_PARAMS,
    CensoredNormal,
    distribution,
    link_log_prob,
    link_mean,
    link_sample,
    log_prob,
    mean,
    sample,
)
