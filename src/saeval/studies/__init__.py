"""Multi-SAE studies (the FaithfulSAE case study, SAEs trained on a corpus vs on the model's own text): each a
StudySpec, registered on import (config modules only: no torch), run by :func:`run_studies`."""

from saeval.studies import case_study, faithful  # registers the built-in studies
from saeval.studies.base import (
    STUDIES,
    StudyConfig,
    StudyResult,
    StudySpec,
    get_study,
    register_study,
    run_studies,
)

BUILTIN_STUDY_MODULES = (case_study, faithful)

__all__ = ["STUDIES", "StudyConfig", "StudyResult", "StudySpec", "get_study", "register_study", "run_studies"]
