"""MI-FGSM (Dong et al., "Boosting Adversarial Attacks with Momentum", CVPR 2018)."""

from robench.attacks._momentum import MomentumAttack


class MIFGSM(MomentumAttack):
    """Momentum iterative FGSM: ``g ← μ·g + ∇L/mean|∇L|``, ``x ← Π(x + α·sign(g))``, no random start.

    Same update as ``torchattacks.MIFGSM`` (bit-identical for equal eps, α, steps, μ, seed);
    the defaults differ: the paper's T = 10, μ = 1 and ``α = eps / T`` (torchattacks: α = 2/255).

    Args:
        steps: iterations T (10; DIR's white-box tables use 20 with step_size 2/255).
        step_size: α; None means ``eps / steps``.
        decay: momentum factor μ (1.0).
        label_mode: ``"true"`` (given labels) or ``"pred"`` (the model's clean prediction).
        early_stop, autocast, channels_last, compile: as :class:`robench.attacks._momentum.MomentumAttack`
            (device options ``auto``: bf16 and channels_last on CUDA, all off on CPU).
    """

    version = "1"
