"""emolens: recognise emotions from facial expressions in images, video and webcams."""

from .labels import CLASSES, CLASSES_7

__version__ = "0.1.0"
__all__ = ["CLASSES", "CLASSES_7", "__version__"]
