from saeval.hosts.hooks import HOOK_KINDS, HookPoint
from saeval.hosts.lm import Intervention, LanguageHost, PrefixState

__all__ = ["HOOK_KINDS", "HookPoint", "Intervention", "LanguageHost", "PrefixState"]
