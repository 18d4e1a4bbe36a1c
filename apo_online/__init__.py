"""apo-online: online Adversarial Preference Optimization on one LoRA-shared backbone.

Public names are imported lazily so that `import apo_online` stays light.
"""

__version__ = "0.1.0"

_LAZY = {
    "Config": "apo_online.config",
    "load_config": "apo_online.config",
    "ConfigError": "apo_online.config",
    "APOGame": "apo_online.game",
    "SharedBackbone": "apo_online.backbone",
    "Rollout": "apo_online.rollout",
    "RolloutSpec": "apo_online.rollout",
    "register_optimizer": "apo_online.optimizers.base",
    "PolicyOptimizer": "apo_online.optimizers.base",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'apo_online' has no attribute {name!r}")
