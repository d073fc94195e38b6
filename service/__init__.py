"""The REST matching service: settings, the inference engine on the per-source path, the gallery (local
or Milvus), the HTTP routes and the command line (``python -m service``)."""
from dataset.exports import lazy_exports

_EXPORTS = {
    "Settings": "settings",
    "load_settings": "settings",
    "Engine": "engine",
    "create_app": "app",
    "open_gallery": "gallery",
    "Gallery": "gallery",
    "SourceBoxes": "gallery",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
