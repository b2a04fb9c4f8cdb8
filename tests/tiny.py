"""Shared tiny settings for tests that build networks (seconds on a CPU, not minutes)."""

TINY_NET = {
    "patch_size": [4, 8, 8],
    "input_shape": [8, 16, 16],
    "hidden_size": 24,
    "mlp_dim": 32,
    "num_layers": 2,
    "num_heads": 2,
    "feature_size": 4,
}
