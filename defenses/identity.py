"""The undefended baseline."""

import torch

from robench.defense import Defense


class NoDefense(Defense):
    """No purification: returns the input unchanged (the "None" row of every table)."""

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return x
