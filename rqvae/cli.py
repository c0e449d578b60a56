"""The ``rqvae`` command: synth, train, encode, evaluate, evaluate-retrieval, promote.

Exit codes: 0 success; 2 bad input (unreadable or invalid embeddings, bad arguments, a refused model
directory); 1 any other failure. Errors print one line starting with ``error:``. Long steps (synth chunks,
training batches per epoch, encoded items) report progress on stderr: a redrawn line on a terminal, periodic
log lines otherwise (Airflow task logs, CI); ``--quiet`` turns both off.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from . import threads
from .config import (
    AUTO_DEVICE,
    DEFAULT_BATCH_ROWS,
    DEFAULT_USERS,
    EncodeOptions,
    InputChecks,
    ModelConfig,
    RetrieverOptions,
    TrainConfig,
)
from .errors import PermanentError
from .modes import Protocol
from .options import cli_default_of, described

logger = logging.getLogger("rqvae")

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
EXIT_CODES = "exit codes: 0 ok, 2 bad input (message names the problem and sample item ids), 1 other failure"
QUIET_HELP = "only warnings and errors: no progress bars or progress log lines"

EPILOG = {
    "synth": """examples:
  rqvae synth --n 100000 --dim 32 --out var/data/synth_100k.parquet
  rqvae synth --n 5689519 --dim 32 --out var/data/embeddings/2026-01-01   # directory + _SUCCESS
  rqvae synth --n 20000 --out var/data/synth.parquet --interactions var/data/interactions   # + user histories""",
    "train": """examples:
  rqvae train --embeddings var/data/synth_100k.parquet --out var/models/m1
  rqvae train --embeddings emb_81_32/ --out m2 --num-codebooks 4 --codebook-size 256 --epochs 3
  rqvae train --embeddings items.parquet --out m3 --config my_config.json   # {"model": {...}, "train": {...}}
  rqvae train --embeddings movies.parquet --out m4 --interactions ratings.parquet --holdout temporal""",
    "encode": """examples:
  rqvae encode --model var/models/m1 --embeddings var/data/synth_100k.parquet --out ids.parquet
  rqvae encode --model m1 --embeddings emb_81_32/ --out ids.parquet --json-dict semantic_id_dict.json""",
    "evaluate": """examples:
  rqvae evaluate --model var/models/m1 --embeddings var/data/synth_100k.parquet --json""",
    "evaluate-retrieval": """examples:
  rqvae evaluate-retrieval --ids var/ids.parquet --interactions ratings.parquet
  rqvae evaluate-retrieval --ids ours.parquet --name ours --ids faiss.parquet --name faiss \\
      --interactions interactions/ --seeds 0,1,2 --epochs 8 --max-users 5000 --json
  (differences are paired on the same users, against the first --ids)""",
    "promote": """examples:
  rqvae promote --publish-root var/data/published 2026-11-30 --reason "roll back: CTR drop after 2026-12-01"
  rqvae promote --publish-root var/data/published movielens/2026-11-30 --reason "no interactions that day"
  rqvae promote --publish-root var/data/published 2026-12-01 --reason "gate noise, checked by hand" --force
  (moves `serving`, appends to promotions.jsonl; the UI page and the semantic_ids_promote DAG also update the
  semantic_ids_serving asset for consumers scheduled on it, which this command, without Airflow, cannot)""",
}


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or comma-separated ints, got {text!r}") from None


def _add_config_flags(parser: argparse.ArgumentParser, cls: type, *, overlay: bool = False) -> None:
    """One flag per per-run field of config class ``cls`` the CLI covers, named, typed, bounded and described by
    the field's Option. ``overlay``: the flags override a --config file, so an absent flag is None."""
    for spec, opt in described(cls):
        if not opt.in_cli:
            continue
        flag = opt.flag or "--" + spec.name.replace("_", "-")
        default = cli_default_of(spec)
        text = opt.cli_help or opt.description
        if default is not None and "default" not in text:
            text = f"{text.rstrip('.')} (default {default})"
        kwargs: dict[str, Any] = {"dest": spec.name, "help": text.replace("%", "%%"),
                                  "default": None if overlay else default}
        if isinstance(default, bool):
            kwargs["action"] = "store_true"
        elif opt.enum is not None:
            kwargs["choices"] = list(opt.enum)
        else:
            kwargs["metavar"] = flag.lstrip("-").upper().replace("-", "_")
            kwargs["type"] = _int_list if opt.many else type(default)
        parser.add_argument(flag, **kwargs)


def _given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The flags of config class ``cls`` that were given (overlay flags left out are None)."""
    values = {spec.name: getattr(args, spec.name, None) for spec, opt in described(cls) if opt.in_cli}
    return {name: value for name, value in values.items() if value is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rqvae",
        description="Train RQ-VAE models and turn item embeddings into semantic IDs.",
        epilog=f"{EXIT_CODES}\n`rqvae COMMAND --help` shows examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quiet", "-q", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=f"{EPILOG[name]}\n\n{EXIT_CODES}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS,
                       help=QUIET_HELP)
        return p

    p = add("synth", "Generate clustered, L2-normalised embeddings (streamed to Parquet).")
    p.add_argument("--n", type=int, required=True, help="number of items")
    p.add_argument("--dim", type=int, default=32, help="embedding dimension (default 32)")
    p.add_argument("--out", required=True, help="a .parquet file, or a directory (parts + _SUCCESS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interactions", help="also write synthetic user histories over these items to this folder "
                   "(Parquet + _SUCCESS; users browse neighbouring items), e.g. for evaluate-retrieval")
    p.add_argument("--users", type=int, default=DEFAULT_USERS,
                   help=f"users of --interactions (default {DEFAULT_USERS}, 30 events each)")

    p = add("train", "Train a model on embeddings and write its directory (config.json + safetensors).")
    p.add_argument("--embeddings", required=True, help="Parquet / .npy / JSON-lines parts / snapshot folder")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--config", help='JSON file {"model": {...}, "train": {...}}; flags override it')
    _add_config_flags(p, ModelConfig, overlay=True)
    _add_config_flags(p, TrainConfig, overlay=True)
    p.add_argument("--allow-pickle", action="store_true", help="read .pkl inputs (runs code from the file!)")
    _add_config_flags(p, InputChecks)
    p.add_argument("--interactions", help="Parquet file or folder (user_id, item_id, timestamp): aligns part of "
                   "the latent with the items' collaborative embeddings (docs/collaborative.md)")
    p.add_argument("--holdout", choices=list(Protocol.choices()), default=None,
                   help="learn only from each user's training part under this evaluation protocol (temporal: the "
                   "last 20%% of events, 1-20, and the one before are held out; leave_one_out: the last two), so "
                   "the IDs can be evaluated on those events without leakage (default: all events)")
    p.add_argument("--holdout-last", type=int, choices=[0, 2], default=0,
                   help="2: the same as --holdout leave_one_out (default 0)")

    p = add("encode", "Encode every item into semantic IDs (Parquet: item_id, codes, dedup).")
    p.add_argument("--model", required=True, help="model directory written by `rqvae train`")
    p.add_argument("--embeddings", required=True)
    p.add_argument("--out", required=True, help="output .parquet")
    p.add_argument("--json-dict", help="also write {item_id: [codes]} JSON for existing inference code")
    p.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS)
    p.add_argument("--allow-pickle", action="store_true")
    p.add_argument("--device", default=AUTO_DEVICE, help="auto (CUDA when present, as the pipeline's encode task), "
                   "cpu, cuda, cuda:1 ...")
    _add_config_flags(p, EncodeOptions)

    p = add("evaluate", "Print quality metrics of a model on embeddings.")
    p.add_argument("--model", required=True)
    p.add_argument("--embeddings", required=True)
    p.add_argument("--json", action="store_true", help="print one JSON object (default: a readable summary)")
    p.add_argument("--allow-pickle", action="store_true")

    p = add("evaluate-retrieval", "Judge semantic-ID sets downstream: train the same small next-item retriever "
            "on each, decode with a beam over real IDs, report Recall@5/10, NDCG@10 and NLL with SEs.")
    p.add_argument("--ids", action="append", required=True,
                   help="semantic-ID Parquet (item_id, codes, dedup); repeat to compare, the first is the baseline")
    p.add_argument("--interactions", required=True, help="Parquet file or folder: user_id, item_id, timestamp")
    p.add_argument("--name", action="append", help="a name per --ids, in order (default: the file names)")
    p.add_argument("--seeds", type=_int_list, default=[0], help="retriever seeds, e.g. 0,1,2 (default 0)")
    _add_config_flags(p, RetrieverOptions)  # --epochs, --max-users
    p.add_argument("--history", type=int, help="items of context (default 20)")
    p.add_argument("--beam", type=int, help="beam width (default 20)")
    p.add_argument("--device", help="auto (CUDA when present), cpu, cuda ...")
    p.add_argument("--json", action="store_true", help="print one JSON object (default: a Markdown table)")

    p = add("promote", "Move a publish root's `serving` alias (what consumers read) to a published version: a "
            "promotion, or a rollback to an older one; one line goes to promotions.jsonl.")
    p.add_argument("version", help="the version to serve, relative to --publish-root: 2026-11-30 or "
                   "movielens/2026-11-30")
    p.add_argument("--publish-root", required=True, help="the publish root (RQVAE_PUBLISH_ROOT of the pipeline)")
    p.add_argument("--reason", required=True, help="why: recorded in the log with your user name and the verdict")
    p.add_argument("--force", action="store_true", help="serve a version that failed the downstream gate (the log "
                   "marks the move forced)")
    p.add_argument("--by", help="who promotes, for the log (default: your login name)")
    return parser


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _train_configs(args: argparse.Namespace, input_dim: int) -> tuple[Any, Any]:
    from .config import load_config_file

    model_d, train_d = load_config_file(args.config) if args.config else ({}, {})
    model_d.update(_given(args, ModelConfig))
    if isinstance(model_d.get("codebook_size"), list) and len(model_d["codebook_size"]) == 1:
        model_d["codebook_size"] = model_d["codebook_size"][0]
    model_d["input_dim"] = input_dim
    train_d.update(_given(args, TrainConfig))
    return ModelConfig.from_dict(model_d), TrainConfig.from_dict(train_d)


def cmd_synth(args: argparse.Namespace) -> int:
    from .io.synth import synth
    from .progress import Progress

    with Progress(args.n, "synth", "items", enabled=not args.quiet) as bar:
        out = synth(args.out, n=args.n, dim=args.dim, seed=args.seed,
                    progress=lambda done, total: bar.update(done - bar.done))
    print(out)
    if args.interactions:
        from .io.interactions import write_interactions
        from .io.readers import read_embeddings
        from .io.synth import synth_interactions

        data = read_embeddings(out)
        events = synth_interactions(data.ids, data.vectors, n_users=args.users, events=30, seed=args.seed)
        print(write_interactions(args.interactions, events))
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from .io.readers import read_embeddings
    from .io.validate import check_embeddings
    from .training.loop import train

    checks = InputChecks(**_given(args, InputChecks))  # the CLI's defaults: any dimension, at least 1 item
    data = read_embeddings(args.embeddings, allow_pickle=args.allow_pickle)
    check_embeddings(data.ids, data.vectors, expected_dim=checks.expected_dim, min_items=checks.min_items,
                     max_abs=checks.max_abs, path=args.embeddings)
    sequences = None
    if args.interactions:
        from .training.collaborative import read_sequences

        holdout = args.holdout or (Protocol.LEAVE_ONE_OUT if args.holdout_last == 2 else None)
        sequences = read_sequences(args.interactions, data.ids, holdout=holdout and Protocol.parse(holdout))
    model_cfg, train_cfg = _train_configs(args, data.vectors.shape[1])
    result = train(data.vectors, model_cfg, train_cfg, out_dir=args.out, show_progress=not args.quiet,
                   interactions=sequences, item_ids=data.ids)
    print(json.dumps({"model": str(args.out), **_round(result.metrics)}))
    return EXIT_OK


def cmd_encode(args: argparse.Namespace) -> int:
    from .encoding.encode import encode_file
    from .io.checkpoint import load_model
    from .io.readers import row_count
    from .model import resolve_device

    # Parquet footers / .npy headers give the item count for free: progress then shows %, rate and ETA.
    total = None if args.quiet else row_count(args.embeddings)
    model = load_model(args.model, device=resolve_device(args.device))
    result = encode_file(model, args.embeddings, args.out, json_dict=args.json_dict,
                         batch_rows=args.batch_rows, allow_pickle=args.allow_pickle, show_progress=not args.quiet,
                         total=total, collision_mode=args.collision_mode)
    print(json.dumps(_round(result)))
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .encoding.encode import encode_stream
    from .io.checkpoint import load_model

    model = load_model(args.model)
    _, _, metrics = encode_stream(model, args.embeddings, allow_pickle=args.allow_pickle, show_progress=False)
    keys = ["n_items", "recon_mse", "unique_ratio", "collision_rate", "max_bucket", "usage", "perplexity"]
    summary = {k: metrics[k] for k in keys}
    if args.json:
        print(json.dumps(_round(summary)))
    else:
        for k in keys:
            print(f"{k:>15}: {_round(summary[k])}")
    return EXIT_OK


def _id_set_names(paths: list[str], names: list[str] | None) -> list[str]:
    from pathlib import Path

    if names is not None and len(names) != len(paths):
        raise ValueError(f"got {len(names)} --name for {len(paths)} --ids; give one name per ID file or none")
    chosen = names or [Path(p).stem if Path(p).suffix else Path(p).name for p in paths]
    if len(set(chosen)) != len(chosen):
        chosen = [f"{n}#{i + 1}" for i, n in enumerate(chosen)] if names is None else chosen
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"--name values must differ, got {chosen}")
    return chosen


def cmd_evaluate_retrieval(args: argparse.Namespace) -> int:
    from .io.interactions import read_interactions
    from .retrieval import IdTable, RetrievalConfig, evaluate_id_sets

    names = _id_set_names(args.ids, args.name)
    tables = {name: IdTable.from_parquet(path) for name, path in zip(names, args.ids, strict=True)}
    interactions = read_interactions(args.interactions)
    flags = {**_given(args, RetrieverOptions), "history": args.history, "beam": args.beam, "device": args.device}
    config = RetrievalConfig(**{k: v for k, v in flags.items() if v is not None})
    report = evaluate_id_sets(tables, interactions, config, seeds=args.seeds)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        info = report.info
        print(f"{report.protocol}: {len(report.groups)} test events ({int(report.cold.sum())} cold) of "
              f"{len(report.users)} users, {info['n_items']} items, seeds {report.seeds}; "
              f"{info['dropped_interactions']} interactions without an ID and {info['dropped_users']} users with < "
              f"{config.min_interactions} interactions dropped; differences vs {names[0]!r}, paired on the same "
              f"events, SEs clustered by user\n")
        print(report.table())
    return EXIT_OK


def cmd_promote(args: argparse.Namespace) -> int:
    import getpass
    from pathlib import Path

    from .ids.promotion import UnknownVersion, promote

    *namespace, name = [part for part in args.version.split("/") if part] or [""]
    if any(part.startswith(".") for part in namespace):
        raise UnknownVersion(f"{args.version!r} is not a version path (no hidden or `..` parts)")
    folder = Path(args.publish_root).joinpath(*namespace)
    outcome = promote(folder, name, by=args.by or getpass.getuser(), via="cli", reason=args.reason,
                      force=args.force)
    print(outcome.message, file=sys.stderr)
    print(json.dumps(outcome.to_dict()))
    return EXIT_OK


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


COMMANDS = {"synth": cmd_synth, "train": cmd_train, "encode": cmd_encode, "evaluate": cmd_evaluate,
            "evaluate-retrieval": cmd_evaluate_retrieval, "promote": cmd_promote}


def main(argv: list[str] | None = None) -> int:
    threads.configure()  # this process is ours: passive OpenMP wait and its thread count, before torch loads
    args = build_parser().parse_args(argv)
    _setup_logging(args.quiet)
    try:
        return COMMANDS[args.command](args)
    except (PermanentError, ValueError, FileNotFoundError) as exc:  # the same call would fail the same way
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # the one place that turns any failure into an exit code, after logging it
        logger.exception("rqvae %s failed", args.command)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
