"""Benchmarks behind the tables in docs/ (benchmarks.md, jpvae.md, tae.md).

One machine:
    python jobs/bench.py jpvae-priors --seeds 0 1 2 --epochs 60
    python jobs/bench.py fit-time --epochs 30
    python jobs/bench.py tae-baselines --seeds 0 1 2 --rates 0.5 0.8 --epochs 80 --threads 1
    python jobs/bench.py jpvae-priors --data mnist-5k --epochs 30 --n-samples 20 --threads 1  # needs mvimpute[bench]
On a Ray cluster (runs on the head node's driver):
    ray job submit --working-dir . -- python jobs/bench.py jpvae-priors
Ray Train vs in-process (throughput; peak memory as the Parquet input grows 10x):
    python jobs/bench.py ray-throughput --n-samples 20000 --epochs 4 --batch-size 64
    python jobs/bench.py ray-memory --sizes 20000 200000 --layouts per_view wide
A sweep's cost per trial (a Ray Train trial and a local sweep's trials vs the same fit in-process, alternated):
    python jobs/bench.py tune-trial-cost --repeats 3 --epochs 10
    python jobs/bench.py tae-sweep --data mnist-5k --epochs 40 --num-samples 10
TAE vs MVAE as the step budget grows (resumable; several processes may share the output folder):
    python jobs/bench.py tae-budget --steps 2000 8000 32000 --seeds 0 1 2 --one-seed-from 32000
Command-line start-up (`mvimpute --help`, `mvimpute train --help`, and `import torch` for scale):
    python jobs/bench.py cli-startup --repeats 5
Serving and batch imputation (loopback only, bounded request counts; docs/serving.md):
    python jobs/bench.py serve-latency --repeats 3 --requests 160
    python jobs/bench.py serve-load --users 16 --requests 2000
    python jobs/bench.py serve-monitoring --repeats 4 --requests 1000  # on an idle machine
    python jobs/bench.py batch-throughput --rows 50000 --repeats 3
    python jobs/bench.py auto-cost --epochs 100 --repeats 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmarks  # noqa: E402  (jobs/benchmarks.py: benchmark code stays out of the library and of logged models)
import yaml


def build_parser() -> argparse.ArgumentParser:
    """The benchmarks and their options (no benchmark runs)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="bench", required=True)
    a = sub.add_parser("jpvae-priors", help="half-digit imputation BCE and active units per JPVAE prior")
    a.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a.add_argument("--epochs", type=int, default=60, help="budget per model (early stopping may end sooner)")
    a.add_argument("--data", choices=benchmarks.BENCH_DATA, default="digits", help="mnist-5k needs mvimpute[bench]")
    a.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (1 helps on a shared machine)")
    a.add_argument("--n-samples", type=int, default=50, help="posterior draws for the 90 %% coverage")
    a.add_argument("--name", default=None, help="file name of the JSON/Markdown outputs (default per data set)")
    a.add_argument("--out", default="outputs/bench")
    a.add_argument("--figure", default="auto", help="PNG path; 'auto': docs/img/jpvae_<data>.png; '' for none")
    f = sub.add_parser("fit-time", help="wall time of MultiViewImputer(model='jpvae').fit on digits-halves")
    f.add_argument("--epochs", type=int, default=30)
    f.add_argument("--repeats", type=int, default=3)
    f.add_argument("--out", default="outputs/bench")
    t = sub.add_parser("tae-baselines", help="TAE vs MVAE vs MIWAE on noisy, incomplete digits (evaluation ELBO)")
    t.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    t.add_argument("--rates", type=float, nargs="+", default=[0.5, 0.8], help="shares of pixels missing (MCAR)")
    t.add_argument("--epochs", type=int, default=80, help="budget per model (early stopping may end sooner)")
    t.add_argument("--data", choices=benchmarks.BENCH_DATA, default="digits", help="mnist-5k needs mvimpute[bench]")
    t.add_argument("--noise-std", type=float, default=0.1)
    t.add_argument("--eval-elbo-steps", type=int, default=1000)
    t.add_argument(
        "--likelihood",
        default=None,
        help="every view's likelihood (default: the data's own, bernoulli: the paper protocol; 'gaussian' "
        "for the library's inference on noisy pixels, with conformal calibration)",
    )
    t.add_argument("--n-samples", type=int, default=100, help="posterior draws for coverage, CRPS and spread")
    t.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (1 helps on a shared machine)")
    t.add_argument("--models", nargs="+", default=["mvae", "miwae", "tae"])
    t.add_argument(
        "--tae",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="TAE settings replacing the chosen ones (all of them: noise, noise_std, warmup_*, C, lam)",
    )
    t.add_argument("--name", default=None, help="file name of the JSON/Markdown outputs (default per data set)")
    t.add_argument("--out", default="outputs/bench")
    t.add_argument("--figure", default="auto", help="PNG path; 'auto': docs/img/tae_<data>.png; '' for none")
    r = sub.add_parser("ray-throughput", help="Ray Train (1 worker, Ray Data from Parquet) vs in-process: samples/s")
    r.add_argument("--n-samples", type=int, default=20_000)
    r.add_argument("--epochs", type=int, default=4)
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--model", default="jpvae")
    r.add_argument("--threads", type=int, default=1, help="torch threads in-process (0: torch's default)")
    r.add_argument("--no-default-threads-run", action="store_true", help="skip the in-process run at default threads")
    r.add_argument("--repeats", type=int, default=3, help="Ray runs, each bracketed by in-process runs")
    r.add_argument("--out", default="outputs/bench")
    m = sub.add_parser("ray-memory", help="peak RSS/PSS of a Ray Train run as the Parquet input grows")
    m.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    m.add_argument("--layouts", nargs="+", default=["per_view", "wide"], choices=["per_view", "wide"])
    m.add_argument("--epochs", type=int, default=2)
    m.add_argument("--batch-size", type=int, default=256)
    m.add_argument("--model", default="jpvae")
    m.add_argument("--name", default="ray_memory", help="file name of the JSON/Markdown outputs")
    m.add_argument("--out", default="outputs/bench")
    ts = sub.add_parser("tae-sweep", help="TAE swept (Optuna + ASHA) on the TAE protocol, then beside MVAE/MIWAE")
    ts.add_argument("--data", choices=benchmarks.BENCH_DATA, default="mnist-5k")
    ts.add_argument("--rate", type=float, default=0.5)
    ts.add_argument("--epochs", type=int, default=40)
    ts.add_argument("--num-samples", type=int, default=10, help="trials")
    ts.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the comparison")
    ts.add_argument("--eval-elbo-steps", type=int, default=300)
    ts.add_argument("--n-samples", type=int, default=20, help="posterior draws for coverage, CRPS and spread")
    ts.add_argument("--runner", choices=["local", "train"], default="local")
    ts.add_argument("--threads", type=int, default=1)
    ts.add_argument("--out", default="outputs/bench")
    w = sub.add_parser("tune-trial-cost", help="a sweep trial's time (Ray Train, local) vs the same fit in-process")
    w.add_argument("--repeats", type=int, default=3)
    w.add_argument("--epochs", type=int, default=10)
    w.add_argument("--model", default="jpvae")
    w.add_argument("--threads", type=int, default=1, help="torch threads in-process (a Ray worker with 1 CPU runs 1)")
    w.add_argument("--local-trials", type=int, default=3, help="identical trials in the local runner's sweep")
    w.add_argument("--out", default="outputs/bench")
    tb = sub.add_parser("tae-budget", help="TAE vs MVAE as the optimiser-step budget grows (MNIST-5k, resumable)")
    tb.add_argument("--steps", type=int, nargs="+", default=[2000, 8000, 32000])
    tb.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    tb.add_argument("--one-seed-from", type=int, default=32000, help="budgets from this one run the first seed only")
    tb.add_argument("--configs", nargs="+", default=["mvae", "tae", "tae_paper"])
    tb.add_argument("--eval-elbo-steps", type=int, default=2000)
    tb.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    tb.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: torch's default)")
    tb.add_argument("--resume-every", type=int, default=5, help="epochs between a run's resume files")
    tb.add_argument("--report-only", action="store_true", help="only the table and figure from the runs so far")
    tb.add_argument("--data", choices=["mnist-5k", "digits"], default="mnist-5k")
    tb.add_argument("--out", default=None, help="default outputs/bench/tae_budget[_digits]")
    tb.add_argument("--figure", default="auto", help="PNG path; 'auto': docs/img/tae_budget[_digits].png; '' for none")
    c = sub.add_parser("cli-startup", help="wall time of `mvimpute --help` against `import torch`, alternated")
    c.add_argument("--repeats", type=int, default=5)
    sl = sub.add_parser("serve-latency", help="endpoint req/s, p50/p99: batched vs not, point vs draws, no-op, raw")
    sl.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    sl.add_argument("--repeats", type=int, default=3)
    sl.add_argument("--requests", type=int, default=160, help="requests per cell and repeat")
    sl.add_argument("--rows-requests", type=int, default=12, help="1,000-row requests per repeat")
    sl.add_argument("--checkpoint", default=None, help="default: train the demo's JPVAE for 5 epochs")
    sl.add_argument("--out", default="outputs/bench")
    sm = sub.add_parser(
        "serve-monitoring", help="idle-machine req/s and p50: no-op Serve vs the endpoint, monitoring off and on"
    )
    sm.add_argument("--repeats", type=int, default=3, help="alternations of the three deployments")
    sm.add_argument("--requests", type=int, default=1000, help="one-instance point requests per cell")
    sm.add_argument("--checkpoint", default=None, help="default: train the demo's JPVAE for 5 epochs")
    sm.add_argument("--out", default="outputs/bench")
    lo = sub.add_parser("serve-load", help="bounded locust headless run on loopback: error count")
    lo.add_argument("--users", type=int, default=16)
    lo.add_argument("--requests", type=int, default=2000, help="requests in all; the run stops after them")
    lo.add_argument("--run-time", type=int, default=60, help="upper bound, seconds")
    lo.add_argument("--kind", choices=["point", "draws"], default="point")
    lo.add_argument("--checkpoint", default=None)
    lo.add_argument("--out", default="outputs/bench")
    bt = sub.add_parser("batch-throughput", help="batch imputation rows/s: Ray Data actor pool vs in-process loop")
    bt.add_argument("--rows", type=int, default=50_000)
    bt.add_argument("--repeats", type=int, default=3)
    bt.add_argument("--batch-size", type=int, default=4096)
    bt.add_argument("--checkpoint", default=None)
    bt.add_argument("--out", default="outputs/bench")
    ct = sub.add_parser("cluster-train", help="local 3-node cluster + S3: 1 vs 2 workers s/epoch; a lost node's cost")
    ct.add_argument("--rows", type=int, default=20_000)
    ct.add_argument("--epochs", type=int, default=4)
    ct.add_argument("--repeats", type=int, default=3)
    ct.add_argument("--out", default="outputs/bench")
    cb = sub.add_parser("cluster-batch", help="bucket-to-bucket batch imputation: in-process vs 1 vs 2 actors, rows/s")
    cb.add_argument("--rows", type=int, default=100_000)
    cb.add_argument("--repeats", type=int, default=3)
    cb.add_argument("--batch-size", type=int, default=4096)
    cb.add_argument("--out", default="outputs/bench")
    ac = sub.add_parser("auto-cost", help="model=auto: its candidates' fits vs auto in-process vs tune on 2 workers")
    ac.add_argument("--epochs", type=int, default=100)
    ac.add_argument("--repeats", type=int, default=3)
    ac.add_argument("--data", default="digits-halves")
    ac.add_argument("--out", default="outputs/bench")
    dm = sub.add_parser("batch-driver-memory", help="the batch driver's peak RSS as the rows grow (bucket to bucket)")
    dm.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    dm.add_argument("--batch-size", type=int, default=4096)
    dm.add_argument("--out", default="outputs/bench")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.bench == "cli-startup":
        cli_startup(args.repeats)
        return
    if args.bench in ("cluster-train", "cluster-batch", "batch-driver-memory", "auto-cost"):
        import bench_cluster as bc  # beside this file

        if args.bench == "cluster-train":
            bc.cluster_train(args.rows, args.epochs, args.repeats, args.out)
        elif args.bench == "auto-cost":
            bc.auto_cost(args.epochs, args.repeats, args.data, args.out)
        elif args.bench == "cluster-batch":
            bc.cluster_batch(args.rows, args.repeats, args.batch_size, args.out)
        else:
            bc.batch_driver_memory(tuple(args.sizes), args.batch_size, args.out)
        return
    if args.bench == "tae-budget":
        import tae_budget  # beside this file

        tae_budget.tae_budget(
            args.steps, args.seeds, args.configs, args.one_seed_from, args.out, args.eval_elbo_steps, args.device,
            args.threads or None, args.resume_every, args.report_only, args.figure or None, args.data,
        )  # fmt: skip
        return
    if args.bench == "tune-trial-cost":
        benchmarks.tune_trial_cost(args.repeats, args.epochs, args.model, args.threads, args.out, args.local_trials)
        return
    if args.bench in ("serve-latency", "serve-load", "batch-throughput", "serve-monitoring"):
        import bench_serving as bs  # beside this file

        if args.bench == "serve-latency":
            bs.serve_latency(
                tuple(args.concurrency), args.repeats, args.requests, args.rows_requests, args.out, args.checkpoint
            )
        elif args.bench == "serve-monitoring":
            bs.serve_monitoring(args.repeats, args.requests, args.out, args.checkpoint)
        elif args.bench == "serve-load":
            bs.serve_load(args.users, args.requests, args.run_time, args.out, args.checkpoint, args.kind)
        else:
            bs.batch_throughput(args.rows, args.repeats, args.out, args.checkpoint, args.batch_size)
        return
    if args.bench == "jpvae-priors":
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        benchmarks.jpvae_priors(
            seeds=tuple(args.seeds),
            epochs=args.epochs,
            out_dir=args.out,
            progress=False,
            data=args.data,
            name=args.name,
            figure=args.figure or None,
            n_samples=args.n_samples,
        )
    elif args.bench == "fit-time":
        benchmarks.fit_time(epochs=args.epochs, repeats=args.repeats, out_dir=args.out)
    elif args.bench == "tae-sweep":
        import torch

        torch.set_num_threads(args.threads)
        benchmarks.tae_sweep(
            data=args.data,
            rate=args.rate,
            epochs=args.epochs,
            num_samples=args.num_samples,
            seeds=tuple(args.seeds),
            eval_elbo_steps=args.eval_elbo_steps,
            n_samples=args.n_samples,
            runner=args.runner,
            out_dir=args.out,
        )
    elif args.bench == "tae-baselines":
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        tae = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.tae)} or None
        benchmarks.tae_vs_baselines(
            seeds=tuple(args.seeds),
            models=tuple(args.models),
            tae=tae,
            name=args.name,
            rates=tuple(args.rates),
            epochs=args.epochs,
            noise_std=args.noise_std,
            eval_elbo_steps=args.eval_elbo_steps,
            n_samples=args.n_samples,
            out_dir=args.out,
            figure=args.figure or None,
            data=args.data,
            likelihood=args.likelihood,
        )
    elif args.bench == "ray-throughput":
        benchmarks.ray_throughput(
            n_samples=args.n_samples,
            epochs=args.epochs,
            batch_size=args.batch_size,
            model=args.model,
            threads=args.threads or None,
            default_threads_run=not args.no_default_threads_run,
            out_dir=args.out,
            repeats=args.repeats,
        )
    elif args.bench == "ray-memory":
        benchmarks.ray_memory(
            sizes=tuple(args.sizes),
            layouts=tuple(args.layouts),
            epochs=args.epochs,
            batch_size=args.batch_size,
            model=args.model,
            out_dir=args.out,
            name=args.name,
        )


def cli_startup(repeats: int = 5) -> None:
    """Median and range of each command's wall time, the commands alternated `repeats` times."""
    import shutil
    import statistics
    import subprocess
    import sys
    import time

    exe = shutil.which("mvimpute") or str(Path(sys.executable).with_name("mvimpute"))
    commands = {
        "mvimpute --help": [exe, "--help"],
        "mvimpute train --help": [exe, "train", "--help"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    }
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(repeats):
        for name, cmd in commands.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times[name].append(time.perf_counter() - t0)
    print(f"| command | median s | min–max s ({repeats} alternated runs) |")
    print("|---|---|---|")
    for name, ts in times.items():
        print(f"| `{name}` | {statistics.median(ts):.2f} | {min(ts):.2f}–{max(ts):.2f} |")


if __name__ == "__main__":
    main()
