"""Model soups (Wortsman et al. 2022): average the weights of the K students of one evaluation.

The K students `evaluate_set` trains (one vmap over seed keys) are stacked pytrees with a
leading seed axis S. A soup is the element-wise mean of a subset of them:

* uniform: theta = (1/K) sum_k theta_k over all K students;
* greedy (the paper's Recipe 1): students sorted by validation accuracy, best first; the
  soup starts as the best one and student k joins when the soup with it is at least as
  accurate on the validation split as the soup without it. Selection reads the validation
  split only; the test split is read once, for the final soup.

Everything in the variables is averaged, BatchNorm running statistics included, as the
reference code averages the whole `state_dict`: it needs no data, and jaxdd's evaluation
students (instance-norm ConvNets, MLPs) have no statistics at all. For a BN student the mean
of the K running variances is not the variance of the averaged network's activations
(recomputing them on the set would be); this is the known approximation of that choice.

Souping presumes students that share their initialisation (the paper's fine-tuned models
all start from one pretrained network): averaging networks from independent random inits
gives a network near chance. `evaluate_set(..., soup=...)` therefore starts every student
from one init (drawn from the evaluation key, or `init_variables`, e.g. weight selection);
the students then differ in data order and augmentation only.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd.models import Variables

SOUPS = ("uniform", "greedy")

# accuracy_fn(variables of one network) -> accuracy in [0, 1] on the validation split
AccuracyFn = Callable[[Variables], float]


def check_soup(kind: str | None) -> None:
    """One-line error for an unknown soup name (None = no soup)."""
    if kind is not None and kind not in SOUPS:
        raise ValueError(f"unknown soup {kind!r}; use one of {', '.join(SOUPS)}")


def soup_of(variables_S: Variables, members: list[int] | np.ndarray) -> Variables:
    """Mean over the leading seed axis of the students `members` (every leaf, BN stats too).

    Computed as theta_0 + mean_k (theta_k - theta_0): the same mean, but exactly theta_0 when
    the members are identical (a plain sum of K equal floats / K can round)."""
    idx = jnp.asarray(np.asarray(members, np.int32))

    def mean(a):
        base = a[idx[0]][None]
        return (base[0] + jnp.mean(a[idx] - base, axis=0)).astype(a.dtype)

    return jax.tree.map(mean, variables_S)


def uniform_soup(variables_S: Variables) -> Variables:
    """Mean of all students' variables."""
    n = jax.tree.leaves(variables_S)[0].shape[0]
    return soup_of(variables_S, list(range(n)))


def greedy_soup(variables_S: Variables, val_acc_S: np.ndarray, val_accuracy: AccuracyFn
                ) -> tuple[Variables, list[int], float]:
    """Wortsman's greedy soup: (soup, member indices in the order they joined, its val accuracy).

    `val_acc_S`: each student's validation accuracy (it sets the order; ties keep the seed
    order); `val_accuracy` evaluates a candidate soup on the validation split. A student joins
    only when the soup's validation accuracy does not drop, so the result is never below the
    best single student on the validation split.
    """
    order = np.argsort(-np.asarray(val_acc_S, np.float64), kind="stable")
    members = [int(order[0])]
    best = float(val_acc_S[order[0]])
    for k in order[1:]:
        cand = members + [int(k)]
        acc = float(val_accuracy(soup_of(variables_S, cand)))
        if acc >= best:
            members, best = cand, acc
    return soup_of(variables_S, members), members, best
