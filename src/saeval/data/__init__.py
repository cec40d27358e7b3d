from saeval.data.activations import ActivationBatch, ActivationCache, stream_activations
from saeval.data.corpora import iter_documents, load_contexts, make_contexts

__all__ = ["ActivationBatch", "ActivationCache", "iter_documents", "load_contexts", "make_contexts",
           "stream_activations"]
