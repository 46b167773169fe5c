"""The engine: preparation, resources, the Ray Train runner, the Tune search and the batch pipeline.

It takes one typed run request built at the edge and passes it down unchanged; it imports no MLflow,
no job config and not the public imputer API. Tracking reaches it as callbacks.
"""
