"""The jobs layer: train, tune, impute and evaluate. Reads configs and flags with one override parser,
owns MLflow runs, registration and aliases, and calls the engine.
"""
