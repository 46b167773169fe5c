"""`model="auto"` against each of its candidates on the `mvimpute evaluate` grid, with checkpoint/resume.

For each data set and size n, seed, mechanism and rate: the split and masks of `mvimpute evaluate`
(80/20 train/test, the test rows' hidden entries scored), every candidate fitted alone and `auto`
fitted over the same candidates; RMSE, CRPS and calibrated 90 % coverage on the test split, and the
fit times. Each fit is one line of a JSON lines file, written as soon as it is done: run the same
command again and the fits already there are skipped, so a stopped run loses at most one fit.

    python jobs/evaluate_auto.py --data digits-halves,synthetic-omics --sizes 40,100,1000 --seeds 0
    python jobs/evaluate_auto.py --table        # the summary table of what the file holds

digits-halves at size n: a fixed random n of its 1,797 rows (seed 0); synthetic-omics at size n:
`synthetic-omics:n_samples=n`. Benchmark code: not part of the library package.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

OUT = Path("outputs/auto/results.jsonl")
METHOD_AUTO = "auto"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python jobs/evaluate_auto.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="digits-halves,synthetic-omics", help="Data sets, comma-separated.")
    p.add_argument(
        "--sizes", default=None,
        help="Samples per data set (before the 80/20 split; default 40,100,1000); with --table, the sizes shown.",
    )  # fmt: skip
    p.add_argument("--mechanisms", default="mcar,view")
    p.add_argument("--rates", default="0.2,0.5")
    p.add_argument("--seeds", default=None, help="Seeds of split and masks (default 0); with --table, the seeds shown.")
    p.add_argument(
        "--candidates", default=None, help="auto's candidates (names), each also fitted alone; default: auto's own."
    )
    p.add_argument(
        "--auto-param", action="append", default=[], metavar="KEY=VALUE",
        help="A setting of auto (YAML value, e.g. tie_se=0); repeatable. Its rows are labelled auto:KEY=VALUE.",
    )  # fmt: skip
    p.add_argument("--epochs", type=int, default=100, help="Epochs of the deep candidates.")
    p.add_argument("--n-samples", type=int, default=100, help="Draws for CRPS and intervals.")
    p.add_argument("--out", type=Path, default=OUT, help="JSON lines file: results appended, done fits skipped.")
    p.add_argument("--table", action="store_true", help="Only print the summary table of --out.")
    return p


def auto_label(params: list[str]) -> str:
    """The method label of auto's rows: `auto`, or `auto:key=value:...` with settings."""
    return ":".join([METHOD_AUTO, *params])


def auto_settings(params: list[str]) -> dict:
    from mvimpute.config import parse_override

    try:
        return {".".join(path): value for path, value in map(parse_override, params)}
    except ValueError as err:
        raise SystemExit(f"--auto-param: {err}") from None


def _items(text: str, cast=str) -> list:
    return [cast(x.strip()) for x in text.split(",") if x.strip()]


def load_sized(name: str, n: int):
    import mvimpute as mvi

    if name == "digits-halves":
        data = mvi.load_dataset(name)
        if n < data.n_samples:
            data = data.subset(np.sort(np.random.default_rng(0).permutation(data.n_samples)[:n]))
        return data
    return mvi.load_dataset(name, n_samples=n)


def done_keys(path: Path) -> set[tuple]:
    if not path.exists():
        return set()
    keys = set()
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                keys.add(_key(json.loads(line)))
            except json.JSONDecodeError:  # a line cut by a stop: that fit runs again
                continue
    return keys


def _key(r: dict) -> tuple:
    return (r["data"], int(r["n"]), r["mechanism"], float(r["rate"]), int(r["seed"]), r["method"])


def run(args) -> None:
    import torch

    import mvimpute as mvi
    from mvimpute.evaluation import hide
    from mvimpute.scoring import score

    torch.set_num_threads(1)
    from mvimpute.auto import DEFAULT_CANDIDATES

    candidates = {c: {} for c in _items(args.candidates)} if args.candidates else dict(DEFAULT_CANDIDATES)
    label, settings = auto_label(args.auto_param), auto_settings(args.auto_param)
    done = done_keys(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    train_kw = {"epochs": args.epochs, "progress": False, "device": "cpu"}
    for name in _items(args.data):
        for n in _items(args.sizes or "40,100,1000", int):
            data = load_sized(name, n)
            for seed in _items(args.seeds or "0", int):
                for mech in _items(args.mechanisms):
                    for rate in _items(args.rates, float):
                        perm = np.random.default_rng(seed).permutation(data.n_samples)
                        n_test = int(round(0.2 * data.n_samples))
                        train, test = data.subset(np.sort(perm[n_test:])), data.subset(np.sort(perm[:n_test]))
                        c_train = hide(train, mech, rate, seed).data
                        c_test = hide(test, mech, rate, seed + 10_000)
                        for method in [*candidates, label]:
                            row = {"data": name, "n": n, "mechanism": mech, "rate": rate, "seed": seed}
                            row["method"] = method
                            if _key(row) in done:
                                continue
                            if method == label:
                                imp = mvi.MultiViewImputer(METHOD_AUTO, candidates=candidates, **settings, **train_kw)
                            else:
                                imp = mvi.MultiViewImputer(method, **candidates[method], **train_kw)
                            t0, c0 = time.perf_counter(), time.process_time()
                            imp.fit(c_train)
                            row["fit_seconds"] = time.perf_counter() - t0
                            row["cpu_seconds"] = time.process_time() - c0  # one torch thread: the fit's own work
                            s = score(
                                imp, test, c_test.data, n_samples=args.n_samples, eval_elbo_steps=0, levels=(0.5, 0.9)
                            )
                            row.update({k: s[k] for k in ("rmse", "crps", "coverage_90") if k in s})
                            if method == label:
                                row["winner"] = imp.model_name
                                row["selection"] = imp.selection_["candidates"]
                            with args.out.open("a") as f:
                                f.write(json.dumps(row) + "\n")
                            print(
                                f"{name} n={n} {mech} {rate:g} seed {seed} {method}"
                                + (f"→{row['winner']}" if "winner" in row else "")
                                + f": rmse {row['rmse']:.4g} crps {row.get('crps', math.nan):.4g} "
                                f"cov90 {row.get('coverage_90', math.nan):.3f} ({row['fit_seconds']:.1f} s)",
                                flush=True,
                            )


def summary(
    path: Path, seeds: list[int] | None = None, label: str = METHOD_AUTO, sizes: list[int] | None = None
) -> str:
    """Markdown: per cell (data, n, mechanism, rate), means over the seeds run: auto's pick(s), its
    RMSE and CRPS over the best single candidate's, its coverage, the column mean's RMSE and CRPS,
    and auto's fit time over the sum of its candidates' (CPU time: the fits run with one torch thread,
    and wall time on shared cores follows the other processes' load)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if (seeds is None or r["seed"] in seeds) and (sizes is None or r["n"] in sizes)]
    cells = sorted({(r["data"], r["n"], r["mechanism"], r["rate"]) for r in rows})
    head = ("| data | n | hidden | seeds | auto picked | RMSE auto / best (best) | CRPS auto / best (best) "
            "| 90 % cov. auto | RMSE / CRPS mean | auto CPU s / Σ candidates' |")  # fmt: skip
    lines = [head, "|" + "---|" * 10]
    verdict = {"rmse": 0, "crps": 0, "coverage": 0, "mean": 0, "cost": 0, "cells": 0}
    ratios: dict[str, list[float]] = {"rmse": [], "crps": [], "cost": []}
    for cell in cells:
        sel = [r for r in rows if (r["data"], r["n"], r["mechanism"], r["rate"]) == cell]
        autos = [r for r in sel if r["method"] == label]
        seeds = sorted({r["seed"] for r in autos})
        sel = [r for r in sel if r["seed"] in seeds]  # seeds where auto ran: like against like
        methods = sorted({r["method"] for r in sel if not r["method"].startswith(METHOD_AUTO)})
        if not autos or not methods:
            continue

        def avg(method, key, sel=sel):
            xs = [r[key] for r in sel if r["method"] == method and r.get(key) is not None]
            return float(np.mean(xs)) if xs else math.nan

        complete = [m for m in methods if len({r["seed"] for r in sel if r["method"] == m}) == len(seeds)]
        best_rmse = min(complete, key=lambda m: avg(m, "rmse"))
        best_crps = min(complete, key=lambda m: avg(m, "crps"))
        a_rmse, a_crps, a_cov = avg(label, "rmse"), avg(label, "crps"), avg(label, "coverage_90")
        r_rmse, r_crps = a_rmse / avg(best_rmse, "rmse"), a_crps / avg(best_crps, "crps")
        # CPU time where every fit of the cell has it (wall time on shared cores follows the neighbours' load)
        clock = "cpu_seconds" if all("cpu_seconds" in r for r in sel) else "fit_seconds"
        cost = avg(label, clock) / sum(avg(m, clock) for m in complete)
        picks = ",".join(f"{w}×{c}" if c > 1 else w for w, c in _counts(r["winner"] for r in autos).items())
        m_rmse, m_crps = avg("mean", "rmse"), avg("mean", "crps")
        verdict["cells"] += 1
        verdict["rmse"] += r_rmse <= 1.02
        verdict["crps"] += r_crps <= 1.02
        verdict["coverage"] += 0.87 <= a_cov <= 0.93
        verdict["mean"] += (a_rmse <= m_rmse and a_crps <= m_crps) if "mean" in methods else True
        verdict["cost"] += cost <= 1.0
        for key, value in (("rmse", r_rmse), ("crps", r_crps), ("cost", cost)):
            ratios[key].append(value)
        lines.append(
            f"| {cell[0]} | {cell[1]} | {cell[2]} {cell[3]:g} | {len(seeds)} | {picks} "
            f"| {r_rmse:.3f} ({best_rmse} {avg(best_rmse, 'rmse'):.4g}) "
            f"| {r_crps:.3f} ({best_crps} {avg(best_crps, 'crps'):.4g}) "
            f"| {a_cov:.3f} | {m_rmse:.4g} / {m_crps:.4g} | {cost:.2f} |"
        )
    v = verdict
    lines.append("")
    lines.append(
        f"cells {v['cells']}: RMSE ≤ 1.02× best in {v['rmse']}, CRPS ≤ 1.02× best in {v['crps']}, "
        f"coverage in 0.87–0.93 in {v['coverage']}, not worse than the column mean (RMSE and CRPS) in {v['mean']}, "
        f"auto's time ≤ the sum of its candidates' in {v['cost']}"
    )
    if v["cells"]:
        lines.append(
            f"over the cells: RMSE / best mean {np.mean(ratios['rmse']):.3f} (worst {max(ratios['rmse']):.3f}), "
            f"CRPS / best mean {np.mean(ratios['crps']):.3f} (worst {max(ratios['crps']):.3f}), "
            f"time / the candidates' median {np.median(ratios['cost']):.2f}"
        )
    return "\n".join(lines)


def _counts(items) -> dict:
    out: dict = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not args.table:
        run(args)
    seeds, sizes = (_items(x, int) if x else None for x in (args.seeds, args.sizes))
    print(summary(args.out, seeds, auto_label(args.auto_param), sizes))


if __name__ == "__main__":
    main()
