"""FLTrust (Cao et al., NDSS 2021): each delta weighed by how much it agrees with the
server's own update on a small clean root set.

Every round the server trains the global adapter on its root set exactly as a client
would, giving the root delta g0. A client's delta g_i gets trust max(0, cos(g_i, g0)), is
rescaled to the norm of g0, and the round's step is the trust-weighted mean. A delta that
points against the root's (sign-flip, label-flip, an undo) weighs nothing; a large one
(scaled, colluding) is cut to the root's length. Written here: Flower has no FLTrust
strategy, and it needs the server's base, which only fedpeft's server holds.

Trust assumed: the root set is clean and drawn from the clients' task. fedpeft draws
`federation.root_examples` training rows (seeded) from the run's data: in a simulation
the clients' pooled rows stand for the few hundred labelled rows an operator holds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np

from fedpeft.core.adapters.delta import compute_delta
from fedpeft.core.adapters.state import Arrays, get_adapter_arrays, set_adapter_arrays
from fedpeft.core.adapters.template import AdapterTemplate
from fedpeft.core.base.model import Base
from fedpeft.core.training.data import DataSpec, TextSplit, client_data, num_partitions, pooled
from fedpeft.core.training.loop import train
from fedpeft.core.training.settings import TrainSettings


def trust_mean(flats: list[np.ndarray], root: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """The trust-weighted mean of the deltas, each rescaled to the root delta's norm, and
    each delta's trust. No trusted delta (or a zero root): a zero step."""
    root = root.astype(np.float64)
    root_norm = float(np.linalg.norm(root))
    step, trusts = np.zeros(root.size, np.float64), []
    for flat in flats:
        flat = flat.astype(np.float64)  # norms, products and sums in float64: float32 squares overflow
        norm = float(np.linalg.norm(flat))
        trust = max(0.0, float(np.dot(flat, root)) / (norm * root_norm)) if norm > 0 and root_norm > 0 else 0.0
        trusts.append(trust)
        if trust:
            step += flat * (trust * root_norm / norm)
    total = sum(trusts)
    return (step / total if total else step), trusts


ROOT_CLIENTS = 20  # clients whose rows the root set is drawn from: a spread, not one user's topics


def root_split(spec: DataSpec, examples: int, seed: int) -> TextSplit:
    """`examples` training rows drawn (seeded) from up to ROOT_CLIENTS clients' rows pooled."""
    picker = random.Random(seed)
    partitions = num_partitions(spec)
    rows = pooled(client_data(spec, partition).train
                  for partition in sorted(picker.sample(range(partitions), min(partitions, ROOT_CLIENTS))))
    chosen = picker.sample(list(zip(rows.texts, rows.labels)), min(examples, len(rows)))
    return TextSplit([t for t, _ in chosen], [y for _, y in chosen])


@dataclass
class RootUpdate:
    """The server's delta on its root set from a given global adapter (one local round)."""

    base: Base
    template: AdapterTemplate
    split: TextSplit
    settings: TrainSettings

    def __call__(self, global_arrays: Arrays, server_round: int) -> Arrays:
        model = self.template.attach(self.base.model)
        try:
            set_adapter_arrays(model, global_arrays)
            train(model, self.base.task, self.base.tokenizer, self.split,
                  replace(self.settings, seed=self.settings.seed * 1_000_003 + server_round))
            return compute_delta(get_adapter_arrays(model), global_arrays, self.template.trainable_names)
        finally:
            model.unload()  # the base goes back without adapter layers
