"""Names the command line shows before anything heavy is imported (checked against the registries in tests)."""

MODEL_NAMES = ("jpvae", "tae", "mvae", "miwae", "mean", "knn", "mice")
DATASET_NAMES = ("digits-halves", "synthetic-omics")
DEFAULT_MODEL_URI = "models:/mvimpute-jpvae@champion"  # what the endpoint, the batch job and `impute` load
MODEL_URI_ENV = "MVIMPUTE_MODEL_URI"
