"""Training: masked-autoencoder pretraining, taxonomy fine-tuning and distillation, on one device or under torchrun."""

from .trainer import *  # noqa: F401,F403
