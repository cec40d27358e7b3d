"""FaithfulSAE's data comparison (arXiv 2506.17673): SAEs trained on the model's own text vs on a corpus."""

from saeval.studies.base import StudySpec, register_study
from saeval.studies.faithful.config import PRESETS, FaithfulConfig, FaithfulResult

SPEC = register_study(
    StudySpec(
        name="faithful",
        config_cls=FaithfulConfig,
        result_cls=FaithfulResult,
        run="saeval.studies.faithful.run:run",
        description="train SAEs on the run's corpus and on the model's own text (two seeds each): shared "
        "features across seeds and corpora, cross-data reconstruction",
        presets=PRESETS,
        report="saeval.studies.faithful.report:report",
        n_saes=0,
    )
)
