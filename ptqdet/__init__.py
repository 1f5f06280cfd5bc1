"""ptqdet: post-training quantization for PaddleDetection inference models."""
__version__ = "0.1.0"
