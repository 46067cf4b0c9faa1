"""lrwa: adversarial data-free knowledge distillation with the
"Learning to Retain while Acquiring" meta update (Patel et al., CVPR 2023)."""

__version__ = "0.1.0"
