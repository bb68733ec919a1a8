"""`polyfuse serve`: a trained model as an HTTP service (needs `pip install polyfuse[serve]`).

    from polyfuse.serve import create_app, ServeSettings
    app = create_app("runs/av/model", ServeSettings())      # any ASGI server can run it

`polyfuse serve MODEL_DIR` runs it under uvicorn with auth, limits, batching and graceful shutdown.
"""

from polyfuse.serve.app import add_inference_route, create_app
from polyfuse.serve.server import serve
from polyfuse.serve.settings import Batching, Limits, ServeSettings

__all__ = ["Batching", "Limits", "ServeSettings", "add_inference_route", "create_app", "serve"]
