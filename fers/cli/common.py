"""Arguments shared by the command lines, with the reference flag names."""

from __future__ import annotations

import argparse
import contextlib

from .. import choices
from ..errors import PARAMETER_FLAGS, ConsoleHandler, FersError, as_flags, console_logging  # noqa: F401 (re-exported)
from ..io import CUBE_LAYOUTS, LAYOUT_CHECK
from ..bands import ENTROPY_BINS, POSITION_POLICIES, STATISTIC_POLICIES, WAVELENGTH_TOLERANCE_NM
from ..utils import DEVICES, REPO_ROOT
from ..weights import NAMES, fetch, named_weights, resolve_branches


BAND_POLICY_HELP = {
    "first": "the first C bands",
    "interp": "the first C if there are enough, else linear interpolation along the band axis to C (default)",
    "error": "the scene must have exactly C bands",
    "std": "the C bands of highest variance",
    "entropy": f"the C bands of highest histogram entropy ({ENTROPY_BINS} bins per band)",
    "low_correlation": "C weakly correlated bands, chosen greedily",
    "wavelength": "linear interpolation in wavelength to the model's band centres (needs the scene's wavelengths "
                  f"and the model's; refused where the model reaches more than {WAVELENGTH_TOLERANCE_NM:g} nm beyond "
                  "the scene)",
}


def add_model_arguments(parser: argparse.ArgumentParser, default_channels: int, abu: bool = False,
                        band_policies: tuple = POSITION_POLICIES + STATISTIC_POLICIES) -> None:
    """``abu``: the scoring defaults of the reference FERS_ABU (float64 RX of x + spa + spe at every
    band count); otherwise the HAD100 rule of the reference ``test.py``. ``band_policies``: the
    ``--band_policy`` choices (``wavelength`` only where the command reads wavelengths)."""
    parser.add_argument("--input_channel", type=int, default=None,
                        help=f"bands the model takes (50, 100 or 200 for the released models; default: "
                             f"{default_channels}, or the band count of --weights)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint_dir", default=str(REPO_ROOT / "checkpoints"),
                        help="parent folder; files are read from <checkpoint_dir>/<C>bands/")
    source.add_argument("--weights", choices=NAMES, default=None, metavar="NAME",
                        help=f"the authors' released weights by name instead of --checkpoint_dir: {', '.join(NAMES)} "
                             "(downloaded once into torch.hub's cache, verified by hash before every use)")
    parser.add_argument("--branches", choices=choices.BRANCHES, default=None,
                        help="both = FERS; spectral = FERD only (needs only convh/enc/pc.pt); spatial = spatial "
                             "only (default: both, or spectral for a ferd-* --weights)")
    parser.model_defaults = {"input_channel": default_channels, "branches": "both"}
    if abu:
        parser.add_argument("--fusion", choices=choices.FUSIONS, default="sum",
                            help="sum (default, the reference FERS_ABU at every band count): RX(x + spa + spe); "
                                 "auto = test.py's HAD100 rule (product of branch maps for <=50 bands, sum above)")
        parser.add_argument("--rx_precision", choices=choices.RX_PRECISIONS, default="float64",
                            help="float64 (default, the reference FERS_ABU at every band count); reference = "
                                 "test.py's HAD100 rule (float32 pinv path for <=50 bands, float64 above); "
                                 "float32 everywhere")
    else:
        parser.add_argument("--fusion", choices=choices.FUSIONS, default="auto",
                            help="auto = reference rule: product of branch maps for <=50 bands, sum above")
        parser.add_argument("--rx_precision", choices=choices.RX_PRECISIONS, default="reference",
                            help="reference = float32 pinv path for <=50 bands and float64 above (reproduces the "
                                 "paper; plain RX without a branch: float64); float64 = numerically sound "
                                 "everywhere; float32 = float32 everywhere")
    parser.add_argument("--band_policy", choices=band_policies, default="interp",
                        help="how the scene's bands become the model's C: "
                             + "; ".join(f"{name} = {BAND_POLICY_HELP[name]}" for name in band_policies)
                             + ". Chosen bands keep their spectral order (docs/detection.md, 'Band policies')")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--batch_size", type=int, default=16, help="scenes per forward pass")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


def given_flags(parser: argparse.ArgumentParser, argv) -> set:
    """The destinations of the flags typed on the command line (argparse defaults excluded): ``parser``
    is a fresh parser of the same command, whose defaults are replaced by ``SUPPRESS`` here."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def resolve_model_arguments(parser, args) -> None:
    """Fill ``--input_channel`` and ``--branches`` (the parser's defaults, or those of ``--weights``)
    and, with ``--weights``, fetch and verify the named files and point ``args.checkpoint_dir`` at
    them: the rest of a command reads checkpoints from ``args.checkpoint_dir`` either way."""
    defaults = parser.model_defaults
    if args.weights is None:
        args.input_channel = defaults["input_channel"] if args.input_channel is None else args.input_channel
        args.branches = args.branches or defaults["branches"]
        return
    weights = named_weights(args.weights)
    if args.input_channel is not None and args.input_channel != weights.channels:
        parser.error(f"--input_channel {args.input_channel} contradicts --weights {weights.name} "
                     f"({weights.channels} bands); leave --input_channel out")
    args.input_channel = weights.channels
    with flags_in_errors():
        args.branches = resolve_branches(weights, args.branches)
        args.checkpoint_dir = str(fetch(weights.name, args.branches))


def check_positive(parser, **values) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")


def add_layout_argument(parser: argparse.ArgumentParser, *names: str) -> None:
    """``--layout``/``--cube_layout``: how the cube files store their axes (``dest='cube_layout'``)."""
    parser.add_argument(*(names or ("--layout", "--cube_layout")), dest="cube_layout", choices=CUBE_LAYOUTS,
                        default=None,
                        help="axes of the cube files: hwb = (rows, cols, bands); bhw = (bands, rows, cols), "
                             "transposed on loading; auto = transposed when it looks bands-first (a ground truth "
                             "matching the last two axes, or the last two axes equal and the first not). "
                             "Default: hwb, and a cube that looks bands-first is refused")


def cube_layout(args) -> str:
    """The layout to load with: the one asked for, or ``check`` (hwb, refusing a bands-first look)."""
    return args.cube_layout or LAYOUT_CHECK


@contextlib.contextmanager
def flags_in_errors():
    """Re-raise a library :class:`FersError` with its parameter names shown as flags."""
    try:
        yield
    except FersError as error:
        raise FersError(as_flags(str(error))) from None
