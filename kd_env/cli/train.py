"""``kd-env train``: one run of any registered policy on an env, through :func:`kd_env.run.train`."""

from __future__ import annotations

import argparse
from typing import Any

from kd_env.cli.common import _add_threads_arg, _apply_threads, _key_values


def add_train_parser(subparsers: Any) -> None:
    train = subparsers.add_parser(
        "train",
        help="train an agent or run a baseline on an env (TensorBoard, checkpoints, --resume)",
        description="One student training run driven by any policy. Example: kd-env train --env "
        "MultiTeacherKD-FashionMNIST-v0 --agent reinforce --env-arg epochs=3",
    )
    train.add_argument("--env", default="MultiTeacherKD-FashionMNIST-v0", help="a registered env id")
    # no argparse choices: a policy registered by an --import module is only known after the import
    train.add_argument(
        "--agent",
        required=True,
        help="a registered policy name: an agent (reinforce, ppo, ...), a baseline (camkd, ...), a reference "
        "(oracle, no-kd) or one of yours (see --import); an unknown name prints the full list",
    )
    train.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (repeatable), e.g. one that calls kd_env.register_policy(...); it must be importable (PYTHONPATH)",
    )
    train.add_argument("--per-sample", action="store_true", help="use the per-sample env (MTKD-RL's formulation)")
    train.add_argument(
        "--env-arg", action="append", metavar="KEY=VALUE", help="env keyword argument (repeatable), e.g. epochs=3 device=cuda"
    )
    train.add_argument("--agent-arg", action="append", metavar="KEY=VALUE", help="agent keyword argument (repeatable), e.g. n_steps=32")
    train.add_argument("--total-steps", type=int, default=None, help="student updates to run (default: one training run)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--run-dir", default=None, help="default: runs/<env>__<agent>__seed<seed>")
    train.add_argument("--checkpoint-every", type=int, default=500, help="student updates between checkpoints (0: only at the end)")
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    train.add_argument("--no-progress", action="store_true")
    train.add_argument("--no-tensorboard", action="store_true")
    _add_threads_arg(train)
    train.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    _apply_threads(args.threads)
    from kd_env.run import RunConfig, train

    run_dir = args.run_dir or f"runs/{args.env}__{args.agent}{'-per-sample' if args.per_sample else ''}__seed{args.seed}"
    config = RunConfig(
        env_id=args.env,
        agent=args.agent,
        run_dir=run_dir,
        per_sample=args.per_sample,
        env_kwargs=_key_values(args.env_arg, "--env-arg"),
        agent_kwargs=_key_values(args.agent_arg, "--agent-arg"),
        total_steps=args.total_steps,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        tensorboard=not args.no_tensorboard,
        progress=not args.no_progress,
        imports=list(args.imports),
    )
    result = train(config, resume=args.resume)
    for index, episode in enumerate(result.episodes):
        print(
            f"student run {index + 1}: test accuracy {episode['final_test_acc']:.4f} "
            f"(best-validation checkpoint, val {episode['best_val_acc']:.4f} at epoch {int(episode['best_epoch']) + 1})"
        )
    print(f"{result.env_steps} student updates in {result.wall_time_s:.0f} s; TensorBoard: {run_dir}/tb")
    return 0
