"""Networks: `mlp` (a tiny tanh MLP, pure init/apply) and `resnet` (CIFAR ResNets in Flax)."""
