from saeval.saes.base import SAE, SAE_REGISTRY, SAEConfig, create_sae

__all__ = ["SAE", "SAE_REGISTRY", "SAEConfig", "create_sae"]
