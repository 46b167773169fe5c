"""Sweep hyper-parameters with Ray Tune and register the best trial as `champion` — `mvimpute tune`.

The same command and options as `mvimpute tune` (see `python jobs/tune.py --help`): a job config
YAML plus `key.path=value` overrides, a search space (`tune_spaces/<model>.yaml`); prints one line
per finished trial and a summary (best trial and score, MLflow parent run, model URI
`models:/mvimpute-<model>@champion`, the sweep's folder).

    python jobs/tune.py --data digits-halves --model jpvae --epochs 20 --num-samples 8
    python jobs/tune.py --model tae --space tune_spaces/tae.yaml --search optuna --scheduler asha
    python jobs/tune.py --resume --name jpvae-sweep-20261201-190000     # continue a stopped sweep
"""

from mvimpute.cli import run_command

if __name__ == "__main__":
    run_command("tune", "python jobs/tune.py")
