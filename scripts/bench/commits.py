"""No regression between commits: the overhead benchmark's training, run by each commit's own llmft.

    python scripts/bench/commits.py BASE [REV ...] [--samples 3] [--steps 12] [--stages 2 3]

Each REV (default: HEAD) and BASE is checked out into a temporary worktree (`git worktree add
--detach`), and `llmft train` from that tree trains the overhead benchmark's small Llama with the
same overrides (1 Ray worker, 1 thread, packed 128-token rows, 8 rows per step; see overhead.py),
arms interleaved. Time per trained token comes from each run's metrics.jsonl `step_time`, the
first 2 steps left out as warm-up. A REV regresses when its median time per trained token is more
than 5% above BASE's (about the spread of repeated samples here). The losses of each REV should
equal BASE's step by step when the training is unchanged: the largest difference is reported.
The result names the commits compared; it is written from a clean tree only, like every benchmark.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import overhead  # noqa: E402

GOAL = 1.05


def worktree(rev: str, parent: Path) -> tuple[str, Path]:
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=common.REPO, check=True, capture_output=True,
                            text=True).stdout.strip()
    path = parent / commit
    subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=common.REPO, check=True,
                   capture_output=True)
    return commit, path


def main() -> None:
    parser = common.arguments(__doc__.splitlines()[0])
    parser.add_argument("base", help="The commit to compare against.")
    parser.add_argument("revs", nargs="*", default=["HEAD"], help="The commits compared with BASE.")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    args = parser.parse_args()
    tree = common.check_tree(args)
    model = common.small_llama()
    parent = Path(tempfile.mkdtemp(prefix="llmft-commits-"))
    try:
        trees = dict(worktree(rev, parent) for rev in [args.base, *args.revs])
        base = next(iter(trees))
        arms = {f"{commit} ZeRO-{stage}": lambda c=commit, s=stage: common.train_with_llmft(
                    trees[c] / common.TINY_CONFIG.relative_to(common.REPO),
                    [*overhead.work(model, args.steps), f"deepspeed.zero_stage={s}", "scaling.num_workers=1"],
                    label=f"commits-{c}-z{s}", tree=trees[c]).records
                for stage in args.stages for commit in trees}
        samples = common.interleaved(arms, args.samples)
    finally:
        for path in parent.iterdir():
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=common.REPO, capture_output=True)
        shutil.rmtree(parent, ignore_errors=True)

    figures, rows, summary = {}, [], []
    for name, runs in samples.items():
        per_token = [common.step_figures(r, skip_first=overhead.WARMUP_STEPS)["seconds_per_trained_token"]
                     for r in runs]
        figures[name] = {"seconds_per_trained_token": common.spread(per_token),
                         "losses": [[r["train_loss"] for r in records if "train_loss" in r] for records in runs]}
    for stage in args.stages:
        reference = figures[f"{base} ZeRO-{stage}"]
        for commit in trees:
            arm = figures[f"{commit} ZeRO-{stage}"]
            slower = common.ratio_of_medians(arm["seconds_per_trained_token"], reference["seconds_per_trained_token"])
            loss_diff = max(abs(a - b) for a, b in zip(arm["losses"][0], reference["losses"][0]))
            arm.update(vs_base=slower, max_abs_loss_diff_vs_base=loss_diff)
            rows.append([f"{commit} ZeRO-{stage}", common.fmt_spread(
                {k: v * 1e3 if k in ("min", "median", "max") else v
                 for k, v in arm["seconds_per_trained_token"].items()}, "{:.3f}"), f"{slower:.2f}", f"{loss_diff:.1e}"])
            if commit != base:
                summary.append(common.summary_row(
                    f"llmft {commit} / {base}, ZeRO-{stage} 1 worker, time per trained token (small Llama, "
                    f"{args.steps - overhead.WARMUP_STEPS} steps after {overhead.WARMUP_STEPS} warm-up)",
                    f"{slower:.2f}x (max loss diff {loss_diff:.0e})", f"<= {GOAL:.2f}x", slower <= GOAL))
    print()
    common.print_table(["arm", "ms / trained token: median (min-max, n)", "vs base", "max |loss diff|"], rows)
    path = common.write_result("commits", {
        "setup": {"base": base, "revs": list(trees)[1:], "steps": args.steps,
                  "warmup_steps_excluded": overhead.WARMUP_STEPS, "work": "overhead.py's small Llama, 1 worker"},
        "arms": figures, "summary": summary}, tree=tree)
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
