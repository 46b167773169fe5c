"""The Ray Serve application for online imputation: `serve.app:build_app`, `serve/config.yaml`."""
