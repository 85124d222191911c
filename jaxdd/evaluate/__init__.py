"""One evaluation protocol for every method, plus the coreset baselines."""

from jaxdd.evaluate.baselines import SELECTORS, dq, dq_bins, herding, kcenter, select
from jaxdd.evaluate.core import EvalData, eval_data, evaluate_set, label_targets, train_seeds
from jaxdd.evaluate.protocols import PROTOCOLS, Protocol, get_protocol

__all__ = ["SELECTORS", "dq", "dq_bins", "herding", "kcenter", "select", "EvalData", "eval_data",
           "evaluate_set", "label_targets", "train_seeds", "PROTOCOLS", "Protocol",
           "get_protocol"]
