from saeval.saes.adapter import wrap_sae
from saeval.saes.base import SAE, SAE_REGISTRY, SAEConfig, create_sae
from saeval.saes.formats import load_sae, save_sae

__all__ = ["SAE", "SAE_REGISTRY", "SAEConfig", "create_sae", "load_sae", "save_sae", "wrap_sae"]
