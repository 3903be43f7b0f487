from fedlstm.detection.bundle import BundleError, ModelBundle

__all__ = ["BundleError", "ModelBundle"]
