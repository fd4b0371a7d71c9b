"""The learning stack: task sets on disk, augmentation, synthetic warps, and training (pretraining, fine-tuning,
Reptile meta-learning) of the networks of :mod:`metareg.core`. Builds on :mod:`metareg.core` only."""
