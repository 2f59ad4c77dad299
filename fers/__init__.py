"""FERS: hyperspectral anomaly detection by feature-enhanced reverse distillation (FERD)
and the "rebellious student" spatial branch (FERS).

The package holds all logic; the scripts at the repository root (``test.py``, ``train.py``,
``FERS_ABU/test.py``, ``train_FERD/train.py``, ``train_FERS/train.py``, ``detect.py``,
``demo.py``) are thin command lines over it.
"""

__version__ = "0.1.0"
