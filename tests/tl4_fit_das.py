"""TransformerLens 4's fit_das on a toy problem, run in a separate environment that has
TransformerLens 4 (the project runs 3.9): tests/test_das.py compares its basis with ours.

    TL4_PYTHON tests/tl4_fit_das.py PROBLEM.pt OUT.pt

The toy network: inputs (u, v), each one of 5 values, one-hot into a 10-dimensional hidden
vector, turned by a fixed random rotation (so the planted variables are not axis-aligned);
an MLP reads u and v back and answers u + v. Interchanging the 5-dimensional subspace of u
from a source gives u_source + v_base. Only torch here, apart from main(): the test imports
the same functions in the project's environment.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch

N_VALUES = 5


def toy_problem(n_pairs: int = 256, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    d = 2 * N_VALUES
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=gen))  # [d, d]
    base = torch.randint(N_VALUES, (n_pairs, 2), generator=gen)  # [pair, (u, v)]
    source = torch.randint(N_VALUES, (n_pairs, 2), generator=gen)
    return {"rotation": rotation, "base": base, "source": source, "targets": source[:, 0] + base[:, 1],
            "d": d, "rank": N_VALUES, "epochs": 4, "batch_size": 32, "lr": 0.02, "seed": 0}


def toy_logits(problem: dict, inputs: torch.Tensor, patch: Callable | None = None, hidden_only: bool = False) -> torch.Tensor:
    rotation = problem["rotation"]
    one_hot = torch.cat([torch.nn.functional.one_hot(inputs[:, 0], N_VALUES), torch.nn.functional.one_hot(inputs[:, 1], N_VALUES)], 1).float()
    hidden = one_hot @ rotation  # [batch, d]
    if hidden_only:
        return hidden
    if patch is not None:
        hidden = patch(hidden)
    z = hidden @ rotation.T  # back to the one-hot axes
    units = torch.relu(z[:, :N_VALUES, None] + z[:, None, N_VALUES:] - 1).flatten(1)  # [batch, u * v]
    readout = torch.zeros(N_VALUES * N_VALUES, 2 * N_VALUES - 1)
    for u in range(N_VALUES):
        for v in range(N_VALUES):
            readout[u * N_VALUES + v, u + v] = 5.0
    return units @ readout


def main(problem_path: str, out_path: str) -> None:
    from transformer_lens import HookedRootModule
    from transformer_lens.hook_points import HookPoint
    from transformer_lens.tools.analysis.interchange import SubspaceInterchange, fit_das, intervened_logits

    problem = torch.load(problem_path)

    class Toy(HookedRootModule):
        def __init__(self):
            super().__init__()
            self.hook_hidden = HookPoint()
            self.setup()

        def forward(self, inputs):
            return toy_logits(problem, inputs, patch=self.hook_hidden)

    model = Toy().eval()
    result = fit_das(model, "hook_hidden", problem["base"], problem["source"], problem["targets"], model,
                     rank=problem["rank"], epochs=problem["epochs"], batch_size=problem["batch_size"], lr=problem["lr"], seed=problem["seed"])
    source_hidden = toy_logits(problem, problem["source"], hidden_only=True)
    logits = intervened_logits(model, "hook_hidden", SubspaceInterchange(result.basis), problem["base"], source_hidden, model)
    accuracy = (logits.argmax(-1) == problem["targets"]).float().mean().item()
    torch.save({"basis": result.basis, "accuracy": accuracy}, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
