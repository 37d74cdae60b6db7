"""``fmboost-app``: the browser app, a thin Gradio page (:mod:`.page`) over what it does (:mod:`.boosting`).

Importing this package is cheap: Gradio loads when the page is built.
"""

from fmboost.app.page import main

__all__ = ["main"]
