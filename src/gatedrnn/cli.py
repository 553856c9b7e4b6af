"""The ``gatedrnn`` command line. The CLI owns the console; library code only logs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table

from gatedrnn.nn.counting import count_parameters, hidden_for_budget
from gatedrnn.nn.spec import CellSpec, make_spec

# The cells `gatedrnn cells` lists: every kind, and the variants the literature compares.
CELL_TABLE: tuple[CellSpec, ...] = (
    make_spec("rnn"),
    make_spec("rnn", nonlinearity="relu"),
    make_spec("lstm"),
    make_spec("lstm", peepholes=True),
    make_spec("lstm", coupled=True),
    make_spec("gru"),
    make_spec("gru", reset="before"),
    make_spec("mgu"),
    make_spec("mingru"),
    make_spec("minlstm"),
)


def _cells(args: argparse.Namespace, console: Console) -> int:
    title = f"Cells at input size {args.input_size}, hidden size {args.hidden_size}"
    if args.budget:
        title += f"; H@budget = hidden size for {args.budget} parameters"
    table = Table(
        title=title,
        caption="per time step, sequence and layer direction: mats = weight matrices, "
        "matmul/pointw = FLOPs, nonlin = sigmoid/tanh/… evaluations",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("cell", no_wrap=True)
    for column in ("params", "gates", "mats", "states", "matmul", "pointw", "nonlin"):
        table.add_column(column, justify="right")
    if args.budget:
        table.add_column("H@budget", justify="right")
    for spec in CELL_TABLE:
        cost = spec.step_cost(args.input_size, args.hidden_size)
        params = count_parameters(spec, args.input_size, args.hidden_size, args.layers)
        row = [spec.name, params, cost.gates, cost.weight_matrices, cost.state_tensors,
               cost.matmul_flops, cost.pointwise_flops, cost.nonlinearities]  # fmt: skip
        if args.budget:
            row.append(hidden_for_budget(spec, args.budget, args.input_size, args.layers))
        table.add_row(*map(str, row))
    console.print(table)
    return 0


def _not_built(name: str, issue: int) -> object:
    def run(args: argparse.Namespace, console: Console) -> int:
        console.print(
            f"[bold red]gatedrnn {name}[/] is not built yet (tracked in issue {issue}); "
            "the layers (gatedrnn.GRU, LSTM, RNN and variants) and `gatedrnn cells` are."
        )
        return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatedrnn",
        description="Gated recurrent layers, and a harness that checks the claims made for GRUs.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    cells = commands.add_parser("cells", help="the registered cells: parameters, gates, FLOPs")
    cells.add_argument("--input-size", type=int, default=88, help="input features (default 88)")
    cells.add_argument("--hidden-size", type=int, default=100, help="hidden size (default 100)")
    cells.add_argument("--layers", type=int, default=1, help="stacked layers (default 1)")
    cells.add_argument(
        "--budget", type=int, default=0, help="also solve the hidden size for this parameter budget"
    )
    cells.set_defaults(run=_cells)

    compare = commands.add_parser("compare", help="RNN vs LSTM vs GRU study (not built yet)")
    compare.set_defaults(run=_not_built("compare", 6))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    try:
        return args.run(args, console)
    except ValueError as error:
        console.print(f"[bold red]error:[/] {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
