"""scanqc.models: the model registry and the bundled, versioned ONNX artifacts (runtime: no torch)."""

from scanqc.models.registry import (
    BUNDLED_DIR,
    InstalledModel,
    ModelRegistry,
    default_registry,
    read_metadata,
    reset_default_registry,
    user_models_dir,
)

__all__ = ["BUNDLED_DIR", "InstalledModel", "ModelRegistry", "default_registry", "read_metadata",
           "reset_default_registry", "user_models_dir"]
