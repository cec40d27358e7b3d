"""The FaithfulSAE matched-feature case study (seed 002); see run.py."""

from saeval.studies.base import StudySpec, register_study
from saeval.studies.case_study.config import PRESETS, CaseStudyConfig, CaseStudyResult

SPEC = register_study(
    StudySpec(
        name="case_study",
        config_cls=CaseStudyConfig,
        result_cls=CaseStudyResult,
        run="saeval.studies.case_study.run:run",
        description="match two SAEs; top windows, self-explanations and embedding scores of the best and worst "
        "matched pairs",
        presets=PRESETS,
        report="saeval.studies.case_study.report:report",
        n_saes=2,
    )
)
