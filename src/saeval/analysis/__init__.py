"""Building blocks shared by evals and studies: matching, windows, probes, ablation, steering maths,
synthetic targets and reconstruction statistics."""
