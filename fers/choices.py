"""The detection options a user chooses from, without torch: the library (:mod:`fers.detectors`,
:class:`fers.evaluation.Detector`) checks against them and the command lines offer them, so a
command parses its arguments (and starts reading scenes) before torch has loaded."""

RX_PRECISIONS = ("reference", "float64", "float32")
FUSIONS = ("auto", "sum", "product")
BRANCHES = ("both", "spectral", "spatial")
