"""torch.hub entry points: the authors' released weights by name, as a :class:`fers.Detector`.

    detector = torch.hub.load("<owner>/<repo>", "fers-had100-50")          # or a local clone:
    detector = torch.hub.load("path/to/FERS-clone", "fers_had100_50", source="local", device="cpu")
    scores = detector.detect(cube)

Every name of :mod:`fers.weights` is here, hyphenated (as ``--weights`` takes it) and with
underscores (a Python identifier); keyword arguments go to :meth:`fers.Detector.from_pretrained`
(``branches``, ``device``, ``fusion``, ``rx_precision``).
"""

dependencies = ["torch", "numpy", "scipy", "tqdm"]

from fers.evaluation import Detector as _Detector  # noqa: E402
from fers.weights import NAMES as _NAMES  # noqa: E402


def _entry(name):
    def load(**options):
        return _Detector.from_pretrained(name, **options)

    load.__name__ = name.replace("-", "_")
    load.__doc__ = f"The released weights {name} as a Detector (fers.Detector.from_pretrained({name!r}, **options))."
    return load


for _name in _NAMES:
    globals()[_name] = globals()[_name.replace("-", "_")] = _entry(_name)
del _name
