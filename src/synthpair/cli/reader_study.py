"""``synthpair reader-study SYN --real DATA --out DIR`` (build the blinded page) and ``synthpair reader-study score
DIR ANSWERS.json ...`` (score the readers): argument parsing only; the work is
:func:`synthpair.report.reader_study.build_reader_study` and
:func:`synthpair.evaluation.reader_study.score_reader_study`."""
from __future__ import annotations

import argparse

USAGE = ("synthpair reader-study SYN --real DATA --out DIR [--n N] [--masks] [--seed S] [--fold K] [--overwrite]\n"
         "       synthpair reader-study score DIR ANSWERS.json [ANSWERS.json ...]")


def cmd_reader_study(args: argparse.Namespace) -> int:
    from ..errors import fail

    if args.paths[0] == "score":
        build_only = [flag for flag, value in (("--real", args.real), ("--out", args.out), ("--n", args.n),
                                               ("--seed", args.seed), ("--fold", args.fold)) if value is not None]
        if args.masks or args.overwrite:
            build_only.append("--masks" if args.masks else "--overwrite")
        if build_only:
            raise fail(f"reader-study score: {build_only[0]} belongs to building a study; score with "
                       f"'synthpair reader-study score DIR ANSWERS.json ...'")
        if len(args.paths) < 3:
            raise fail("reader-study score: expected DIR and at least one ANSWERS.json, e.g. 'synthpair reader-study "
                       "score DIR reader1.json reader2.json'")
        from ..evaluation.reader_study import score_reader_study

        scores = score_reader_study(args.paths[1], args.paths[2:])
        for r in scores["readers"]:
            print(f"{r['reader']}: accuracy {100 * r['accuracy']:.1f}% (real {100 * r['specificity']:.1f}%, synthetic "
                  f"{100 * r['sensitivity']:.1f}%), confidence {r['confidence']:.2f}")
        agr = scores["agreement"]
        if agr is not None:
            k = agr["call"]["fleiss_kappa"]
            print(f"Fleiss' kappa (real/synthetic call): {'undefined' if k is None else f'{k:.3f}'}")
        print(f"scores: {args.paths[1]}/scores.md  (and scores.json)")
        return 0
    if len(args.paths) != 1:
        raise fail(f"reader-study: expected one synthetic folder, got {' '.join(args.paths)}; usage: {USAGE}")
    if not args.real or not args.out:
        raise fail("reader-study: building a study needs --real DATA and --out DIR, e.g. 'synthpair reader-study SYN "
                   "--real DATA --n 30 --out DIR'")
    from ..report.reader_study import ReaderStudyConfig, build_reader_study

    cfg = ReaderStudyConfig(n=30 if args.n is None else args.n, seed=args.seed or 0, masks=bool(args.masks),
                            fold=args.fold)
    out = build_reader_study(args.paths[0], args.real, args.out, cfg, overwrite=args.overwrite)
    print(f"reader study: {out}/reader_study.html  (send this page to each reader; {out}/key.json holds the truth — "
          f"keep it to yourself)")
    print(f"score: synthpair reader-study score {out} ANSWERS.json [ANSWERS.json ...]")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``reader-study`` on the top-level subparsers."""
    sp = sub.add_parser("reader-study", usage=USAGE,
                        help="blinded real-vs-synthetic reader study: a self-contained HTML page + key.json, and "
                             "'score' for the readers' answers (accuracy, sensitivity/specificity, quality "
                             "scores, kappa)")
    sp.add_argument("paths", nargs="+", metavar="SYN | score DIR ANSWERS.json",
                    help="the synthetic folder to build a study from, or 'score' followed by the study folder and "
                         "the readers' answers files")
    sp.add_argument("--real", metavar="DATA", help="prepared dataset: real images from the training side of --fold")
    sp.add_argument("--out", metavar="DIR", help="study folder (reader_study.html, key.json)")
    sp.add_argument("--n", type=int, help="images in the study, half synthetic (default 30)")
    sp.add_argument("--masks", action="store_true", help="show mask contours and ask for a mask quality score")
    sp.add_argument("--seed", type=int, help="seed of the draw and the order (default 0)")
    sp.add_argument("--fold", type=int, help="fold of DATA (default: the fold in SYN's manifest)")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing study folder")
    sp.set_defaults(func=cmd_reader_study)
