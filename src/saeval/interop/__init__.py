"""Results in other tools' formats, out and in: SAEBench's result files (:mod:`saeval.interop.saebench`)."""
