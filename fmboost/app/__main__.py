"""``python -m fmboost.app``: the same as ``fmboost-app``."""

from fmboost.app.page import main
from fmboost.cli import exit_without_collecting

exit_without_collecting(main())
