"""DIR's restored-representation attack (Zhou et al., ICML 2023, Eq. 9): PGD-20 on the target alone."""

from __future__ import annotations

from torch import nn

from robench.attacks.pgd import PGD


class RestoredPGD(PGD):
    """PGD against the bare target model around the defense's restored image ``g(x')`` (DIR Eq. 9).

    The starting point and the ball come from the runner's ``restored`` setting (``restore_from``
    names the attack that makes ``x'``; DIR's reading is white-box PGD-20 on the pipeline), so
    this attack runs only there. Defaults: 20 steps (DIR), step 2/255 and eps 8/255 (DIR does not
    state them; robench's choice, specs D10). All PGD options apply.
    """

    def __init__(self, *, steps: int = 20, **pgd_options):
        super().__init__(steps=steps, **pgd_options)

    def unsupported(self, setting: str, defense: nn.Module) -> str | None:
        if setting != "restored":
            return f"it attacks around the defense's restoration, so it needs the restored setting, not {setting!r}"
        return None
