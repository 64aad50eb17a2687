"""Latent views Tz. Each module of this package registers its views by name.

A view turns an anchor latent z (and class y) into K neighbor latents; see `base.py`.
"""

from genrep.generate.views.base import VIEWS, View, build_view

__all__ = ["VIEWS", "View", "build_view"]
