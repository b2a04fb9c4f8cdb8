"""marlseg: blockwise neuron segmentation of EM volumes larger than memory."""

__version__ = "0.1.0"
