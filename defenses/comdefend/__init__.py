"""ComDefend (Jia et al., "ComDefend: An Efficient Image Compression Model to Defend Adversarial Examples")."""

from robench.defenses.comdefend.defense import ComDefend

__all__ = ["ComDefend"]
