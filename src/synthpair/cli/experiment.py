"""``synthpair experiment NAME ...``: the subcommand of each registered experiment (see
:mod:`synthpair.experiments`). Modules are imported lazily, only for the experiment that runs; one whose module
is missing is not listed."""
from __future__ import annotations

import argparse
import importlib
import importlib.util


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..experiments import EXPERIMENTS

    sp = sub.add_parser("experiment", help="multi-stage studies (pig, polyp, emit-diff, label-scarce)")
    ex = sp.add_subparsers(dest="experiment", metavar="NAME", required=True)
    for name, (module, help_text) in EXPERIMENTS.items():
        if importlib.util.find_spec(module) is None:
            continue
        mod = importlib.import_module(module)
        p = ex.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
