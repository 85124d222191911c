"""SRe2L statistics matching, as the README imports it; the code lives in
`jaxdd.methods.statistics` (capture, losses, targets, recover)."""

from jaxdd.methods.statistics.capture import bn_input_stats
from jaxdd.methods.statistics.losses import sre2l_loss
from jaxdd.methods.statistics.recover import RecoverConfig, make_recover

__all__ = ["RecoverConfig", "bn_input_stats", "make_recover", "sre2l_loss"]
