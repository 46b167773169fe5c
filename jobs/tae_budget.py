"""TAE against MVAE as the optimiser-step budget grows, on the TAE paper's protocol (docs/tae.md).

MNIST-5k as one 784-pixel view (or, with `data="digits"`, scikit-learn's 8×8 digits as one 64-pixel
image), noise σ = 0.1, 50 % of the pixels hidden (MCAR), a test split of 20 % per seed. Each
configuration trains for a fixed number of optimiser steps on the whole corrupted training split (no
early stopping, final weights, as the paper trains) and is scored on the corrupted test split
against its clean truth: evaluation ELBO (a bound on log q(x_truth | y), nats per image), PSNR of
the posterior mean on the hidden pixels, RMSE, raw 90 % coverage and CRPS of the draws, and the
quantities the verdict needs: TAE's condition E[log r(z|x) − log q(z|y)], its noise level β, and the
variances of q(z|y), r(z|x) and q(x|z).

Configurations: `mvae` and `tae` with the shared architecture of docs/tae.md (two 400-unit layers,
20 latents, batch 64, Adam 1e-3; TAE with the settings chosen there), `tae_paper`
(jobs/tae_paper.yaml: every setting the paper gives, batch 20, Adam 2e-4, inferred β, warm-up
0.1 → 0.2 of the budget), `tae_paper_fixed` (the same with β fixed at the true σ = 0.1 instead of
inferred), `tae_default` (this project's TAE defaults on the shared architecture).

Every run is one file of results (`runs/<config>_<steps>_<seed>.json`): a run whose file exists is
not run again, and a run stopped midway resumes from its `resume/` file (`fit(resume_file=...)`),
so a stopped curve loses at most a few epochs. Several processes may share one output folder:
each claims a run with a lock file (a lock whose process is gone is taken over).

    python jobs/bench.py tae-budget --steps 2000 8000 32000 --seeds 0 1 2 --one-seed-from 32000
    python jobs/bench.py tae-budget --report-only    # the table and the figure from the runs so far
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from mvimpute.config import load_job_config, parse_override
from mvimpute.imputer import MultiViewImputer
from mvimpute.scoring import score

CONFIGS = ("mvae", "tae", "tae_paper", "tae_default", "tae_paper_fixed")
PAPER_CONFIG = Path(__file__).resolve().parent / "tae_paper.yaml"
N_DRAWS = 20  # posterior draws for coverage, CRPS and spread (as in docs/tae.md's MNIST-5k table)


def config_params(config: str) -> tuple[str, dict, int]:
    """(model, parameters of `MultiViewImputer` except epochs/seed/device, batch size) of `config`:
    one of `CONFIGS`, or one of them with settings replaced, `name:key=value,key=value` (YAML values,
    e.g. `tae:latent_logvar_cap=2`)."""
    import benchmarks as b  # beside this file

    if ":" in config:
        base, _, items = config.partition(":")
        model, params, batch_size = config_params(base)
        for item in filter(None, items.split(",")):
            path, value = parse_override(item)
            params[".".join(path)] = value
        return model, params, int(params.get("batch_size", batch_size))

    fixed = dict(val_frac=0.0, patience=None, calibrate=False, progress=False)  # a fixed budget, final weights
    shared = {**b.TAE_BASELINES_ARCH, **b.TAE_BASELINES_BUDGET, **fixed}
    if config == "mvae":
        return "mvae", shared, shared["batch_size"]
    if config == "tae":
        return "tae", {**shared, **b.TAE_CHOSEN}, shared["batch_size"]
    if config == "tae_default":
        return "tae", shared, shared["batch_size"]
    if config in ("tae_paper", "tae_paper_fixed"):
        job = load_job_config(PAPER_CONFIG)
        train = {k: v for k, v in job.train.items() if k not in ("epochs", "seed", "device")}
        params = {**job.model_params, **train, **fixed}
        if config == "tae_paper_fixed":  # every paper setting but one: β fixed at the true noise σ
            params.update(noise="fixed", noise_std=0.1)
        return job.model, params, int(train["batch_size"])
    raise ValueError(f"unknown configuration {config!r}; choose from {list(CONFIGS)}")


def epochs_for(steps: int, n_train: int, batch_size: int) -> tuple[int, int]:
    """(epochs, optimiser steps they make): the fewest whole epochs with at least `steps` steps."""
    per_epoch = math.ceil(n_train / batch_size)
    epochs = max(1, math.ceil(steps / per_epoch))
    return epochs, epochs * per_epoch


@torch.no_grad()
def posterior_variances(imp: MultiViewImputer, corrupted) -> dict[str, float]:
    """Mean variances of q(z|y), q(x|z) (hidden and observed pixels apart) and, for TAE, r(z|x) with
    x ~ q(x|z), and TAE's condition E[log r(z|x) − log q(z|y)], on `corrupted` (one draw per row)."""
    model = imp.model_
    model.eval()
    batch = imp.schema_.to_batch(imp.schema_.check(corrupted)).to(next(model.parameters()).device)
    post = model.posterior
    _, m = post.observed(batch)
    g = torch.Generator(device=m.device).manual_seed(0)
    mu_z, lv_z = post.posterior_z(batch)
    z = mu_z + torch.exp(0.5 * lv_z) * torch.randn(mu_z.shape, generator=g, device=m.device)
    mu_x, lv_x = post.posterior_x_given_z(z, batch)
    out = {
        "var_q_z": float(lv_z.exp().mean()),
        "std_q_x_hidden": float(torch.exp(0.5 * lv_x)[m == 0].mean()),
        "std_q_x_observed": float(torch.exp(0.5 * lv_x)[m == 1].mean()),
    }
    if hasattr(model, "auxiliary_z"):
        x = mu_x + torch.exp(0.5 * lv_x) * torch.randn(mu_x.shape, generator=g, device=m.device)
        mu_r, lv_r = model.auxiliary_z(x, batch)
        normal = torch.distributions.Normal
        log_r = normal(mu_r, torch.exp(0.5 * lv_r)).log_prob(z).sum(-1)
        log_q = normal(mu_z, torch.exp(0.5 * lv_z)).log_prob(z).sum(-1)
        out.update(var_r_z=float(lv_r.exp().mean()), condition_test=float((log_r - log_q).mean()))
    return out


def run_one(
    config: str,
    steps: int,
    seed: int,
    out: Path,
    eval_elbo_steps: int,
    device: str,
    resume_every: int,
    data: str = "mnist-5k",
) -> dict:
    """Train `config` for `steps` optimiser steps on seed `seed`'s split and score it (resumable)."""
    import benchmarks as b

    train, test, train_c, test_c = b.noisy_digits(0.5, seed, 0.1, data)
    model, params, batch_size = config_params(config)
    epochs, steps_run = epochs_for(steps, train_c.n_samples, batch_size)
    key = f"{config}_{steps}_{seed}"
    imp = MultiViewImputer(model, scalings=b.same_scale(train_c), epochs=epochs, seed=seed, device=device, **params)
    t0 = time.perf_counter()
    resume = out / "resume" / f"{key}.pt"
    resume.parent.mkdir(parents=True, exist_ok=True)

    def progress(epoch: int, metrics: dict, improved: bool) -> None:
        if (epoch + 1) % max(1, epochs // 10) == 0 or epoch + 1 == epochs:
            extra = f" condition {metrics['train_condition_value']:.2f}" if "train_condition_value" in metrics else ""
            print(f"  {key}: epoch {epoch + 1}/{epochs} loss {metrics['train_loss']:.2f}{extra}", flush=True)

    imp.fit(train_c, on_epoch=progress, resume_file=resume, resume_every=resume_every)
    fit_wall = time.perf_counter() - t0
    imp.save(out / "models" / f"{key}.pt")  # the final model, for later looks (e.g. its score on training rows)
    train_seconds = float(sum(h["epoch_seconds"] for h in imp.history_))
    t1 = time.perf_counter()
    torch.manual_seed(seed)
    s = score(imp, test, test_c, n_samples=N_DRAWS, eval_elbo_steps=eval_elbo_steps)
    last = imp.history_[-1]
    row = {
        "config": config,
        "data": data,
        "model": model,
        "steps": steps,
        "steps_run": steps_run,
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "device": str(imp._device()),
        "threads": torch.get_num_threads(),
        "eval_elbo": s["eval_elbo"],
        "psnr": float(-20 * np.log10(s["rmse"])),
        "rmse": s["rmse"],
        "coverage_90_raw": s["coverage_90"],
        "crps": s["crps"],
        "spread": b.posterior_spread(imp, test_c, N_DRAWS),
        **posterior_variances(imp, test_c),
        "train_seconds": train_seconds,  # the training passes (summed epoch_seconds), resumed parts included
        "ms_per_step": 1000 * train_seconds / steps_run,
        "fit_wall_seconds_this_process": fit_wall,
        "score_seconds": time.perf_counter() - t1,
        "eval_elbo_steps": eval_elbo_steps,
        "settings": {k: v for k, v in params.items() if k != "progress"},
    }
    if model == "tae":
        row.update(
            condition_final=last["train_condition_value"],
            beta_final=last["train_beta"],
            C=last["train_C"],
            condition_trace=[round(h["train_condition_value"], 3) for h in imp.history_],
        )
    return row


def _claim(lock: Path) -> bool:
    """Create `lock` holding this pid; a lock whose process is gone is taken over."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int(lock.read_text() or 0)
            os.kill(pid, 0)
            return False  # its process still runs
        except (ValueError, ProcessLookupError):
            lock.unlink(missing_ok=True)
            return _claim(lock)
        except PermissionError:
            return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def plan(steps: list[int], seeds: list[int], one_seed_from: int | None, configs: list[str]) -> list[tuple]:
    """(config, steps, seed) runs, the cheap budgets first; one seed at budgets ≥ `one_seed_from`."""
    runs = []
    for n in sorted(steps):
        for seed in seeds[:1] if one_seed_from is not None and n >= one_seed_from else seeds:
            for config in configs:
                runs.append((config, n, seed))
    return runs


def tae_budget(
    steps: list[int],
    seeds: list[int],
    configs: list[str],
    one_seed_from: int | None = None,
    out_dir: str | Path | None = None,
    eval_elbo_steps: int = 2000,
    device: str = "auto",
    threads: int | None = 1,
    resume_every: int = 5,
    report_only: bool = False,
    figure: str | None = "auto",
    data: str = "mnist-5k",
) -> list[dict]:
    """The grid of `plan`'s runs (those without a result file), then `report`. `out_dir` and
    `figure` default to outputs/bench/tae_budget[_digits] and docs/img/tae_budget[_digits].png."""
    suffix = "" if data == "mnist-5k" else f"_{data}"
    out = Path(out_dir or f"outputs/bench/tae_budget{suffix}")
    figure = f"docs/img/tae_budget{suffix}.png" if figure == "auto" else figure
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    todo = [] if report_only else plan(steps, seeds, one_seed_from, configs)
    for i, (config, n, seed) in enumerate(todo):
        key = f"{config}_{n}_{seed}"
        done, lock = out / "runs" / f"{key}.json", out / "runs" / f"{key}.lock"
        if done.exists() or not _claim(lock):
            continue
        try:
            if done.exists():  # finished by another process between the check and the claim
                continue
            print(f"[{i + 1}/{len(todo)}] {key}", flush=True)
            row = run_one(config, n, seed, out, eval_elbo_steps, device, resume_every, data)
            done.write_text(json.dumps(row, indent=2))
            (out / "resume" / f"{key}.pt").unlink(missing_ok=True)
            print(json.dumps({k: v for k, v in row.items() if k not in ("condition_trace", "settings")}), flush=True)
        finally:
            lock.unlink(missing_ok=True)
    rows = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    report(rows, out, figure, data)
    return rows


def _ms(xs) -> str:
    xs = np.asarray([x for x in xs if x is not None], dtype=float)
    if len(xs) == 0:
        return "–"
    return f"{xs.mean():.2f}" if len(xs) == 1 else f"{xs.mean():.2f} ± {xs.std(ddof=1):.2f}"


def report(rows: list[dict], out: Path, figure: str | None, data: str = "mnist-5k") -> str:
    """The table (one line per configuration and budget: mean ± sd over seeds) and the figure."""
    mvae = {(r["steps"], r["seed"]): r["eval_elbo"] for r in rows if r["config"] == "mvae"}
    head = (
        "| steps | config | seeds | eval ELBO | ratio to MVAE | ELBO − MVAE's | condition (C) | β | var q(z\\|y) "
        "| var r(z\\|x) | std q(x\\|z) hidden / observed | PSNR (dB) | RMSE | raw 90 % cov. | CRPS | ms/step |"
    )
    lines = [head, "|" + "---|" * len(head.strip("| ").split(" | "))]
    order = {c: i for i, c in enumerate(CONFIGS)}
    for n in sorted({r["steps"] for r in rows}):
        for config in sorted({r["config"] for r in rows if r["steps"] == n}, key=lambda c: order.get(c, len(order))):
            rs = [r for r in rows if r["steps"] == n and r["config"] == config]
            paired = [r for r in rs if (n, r["seed"]) in mvae]
            ratio = _ms([r["eval_elbo"] / mvae[(n, r["seed"])] for r in paired]) if config != "mvae" else "–"
            diff = _ms([r["eval_elbo"] - mvae[(n, r["seed"])] for r in paired]) if config != "mvae" else "–"
            tae = rs[0]["model"] == "tae"
            cond = f"{_ms([r['condition_final'] for r in rs])} ({rs[0]['C']:g})" if tae else "–"
            lines.append(
                f"| {n:,} | {config} | {len(rs)} | {_ms([r['eval_elbo'] for r in rs])} | {ratio} | {diff} | {cond} "
                f"| {_ms([r.get('beta_final') for r in rs]) if tae else '–'} | {_ms([r['var_q_z'] for r in rs])} "
                f"| {_ms([r.get('var_r_z') for r in rs]) if tae else '–'} "
                f"| {_ms([r['std_q_x_hidden'] for r in rs])} / {_ms([r['std_q_x_observed'] for r in rs])} "
                f"| {_ms([r['psnr'] for r in rs])} | {_ms([r['rmse'] for r in rs])} "
                f"| {_ms([r['coverage_90_raw'] for r in rs])} | {_ms([r['crps'] for r in rs])} "
                f"| {_ms([r['ms_per_step'] for r in rs])} |"
            )
    text = "\n".join(lines)
    (out / "tae_budget.md").write_text(text + "\n")
    (out / "tae_budget.json").write_text(json.dumps(rows, indent=2))
    if figure and rows:
        budget_figure(rows, Path(figure), data)
    print(text)
    return text


def budget_figure(rows: list[dict], path: Path, data: str = "mnist-5k") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mvae = {(r["steps"], r["seed"]): r["eval_elbo"] for r in rows if r["config"] == "mvae"}
    every = list(CONFIGS) + sorted({r["config"] for r in rows} - set(CONFIGS))
    taes = [c for c in every if c != "mvae"]
    panels = [
        ("eval_elbo", "evaluation ELBO (nats / image)", every),
        ("ratio", "eval ELBO ratio to MVAE (paper: 1.98)", taes),
        ("condition_final", "condition E[log r − log q] (nats)", taes),
        ("beta_final", "β (noise std)", taes),
        ("var_q_z", "mean variance of q(z|y)", every),
        ("var_r_z", "mean variance of r(z|x)", taes),
        ("psnr", "PSNR on hidden pixels (dB)", every),
    ]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for ax, (key, title, configs) in zip(axes.flat, panels, strict=False):
        for config in configs:
            rs = [r for r in rows if r["config"] == config]
            if key == "ratio":
                rs = [
                    dict(r, ratio=r["eval_elbo"] / mvae[(r["steps"], r["seed"])])
                    for r in rs
                    if (r["steps"], r["seed"]) in mvae
                ]
            rs = [r for r in rs if r.get(key) is not None]
            if not rs:
                continue
            steps = sorted({r["steps"] for r in rs})
            mean = [np.mean([r[key] for r in rs if r["steps"] == n]) for n in steps]
            color = f"C{every.index(config) % 10}"  # one colour per configuration in every panel
            ax.plot(steps, mean, "o-", label=config, color=color)
            ax.scatter([r["steps"] for r in rs], [r[key] for r in rs], s=8, alpha=0.5, color=color)
        if key == "ratio":
            ax.axhline(1.98, ls="--", c="grey")
            ax.axhline(1.0, ls=":", c="grey")
        ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimiser steps")
        ax.legend(fontsize=7)
    axes.flat[-1].axis("off")
    name = {"mnist-5k": "MNIST-5k", "digits": "digits (8×8)"}.get(data, data)
    fig.suptitle(f"TAE vs MVAE on {name}, 50 % missing, σ = 0.1: the step budget (points: seeds, lines: means)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
