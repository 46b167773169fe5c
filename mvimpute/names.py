"""Names the command line shows before anything heavy is imported (checked against the registries in tests)."""

MODEL_NAMES = ("jpvae", "tae", "mvae", "miwae", "mean", "knn", "mice")
AUTO = "auto"  # not a model: picks one of the models on the validation score (mvimpute/auto.py)
DATASET_NAMES = ("digits-halves", "synthetic-omics")
DEFAULT_MODEL_URI = "models:/mvimpute-jpvae@champion"  # what the endpoint, the batch job and `impute` load
MODEL_URI_ENV = "MVIMPUTE_MODEL_URI"
