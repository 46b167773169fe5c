"""Names the command line shows before anything heavy is imported (checked against the registries in tests)."""

MODEL_NAMES = ("jpvae", "tae", "mvae", "miwae")
DATASET_NAMES = ("digits-halves", "synthetic-omics")
