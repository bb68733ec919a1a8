"""Where one `/v1/predict` request's time goes, in process: each stage of the server's code alone, then
the same request through the ASGI app (httpx ASGITransport, no sockets) with timestamps at each thread.

    .venv/bin/python bench/serve_stages.py                  # the model of bench/serve_load.py (built once)
    .venv/bin/python bench/serve_stages.py --requests 500

One-row JSON requests (a test-split image and audio clip, base64), p50 / mean in ms after the first
fifth (warm-up) of `--requests`. Prints a table; writes nothing. On a shared machine, compare runs made
back to back only: other jobs' load moves every stage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from serve_load import request_bodies, trained_model

from polyfuse.data.media import resolve_media
from polyfuse.data.modalities.audio import audio_features, decode_audio
from polyfuse.data.modalities.image import decode_image, image_to_tensor
from polyfuse.serve import ServeSettings, create_app
from polyfuse.serve.engine import Engine
from polyfuse.serve.observability import LOGGER
from polyfuse.serve.requests import parse_json, request_model, rows_from_json

Times = dict[str, list[float]]


def timed(times: Times, name: str, fn: Callable[..., Any], *args: Any) -> Any:
    started = time.perf_counter()
    out = fn(*args)
    times.setdefault(name, []).append((time.perf_counter() - started) * 1000)
    return out


def stages(engine: Engine, bodies: list[bytes], count: int) -> Times:
    """Each step a JSON request takes through the server's code, called directly on this thread."""
    settings = ServeSettings()
    model = request_model(engine.columns, settings.limits)
    cfg = engine.preprocessor.state.config
    times: Times = {}
    for i in range(count):
        document = timed(times, "json.loads", parse_json, bodies[i % len(bodies)])
        rows = timed(times, "pydantic validation + dump", rows_from_json, document, model, settings.limits)
        image = timed(times, "base64 image", resolve_media, rows[0]["image"], None, True, False)
        audio = timed(times, "base64 audio", resolve_media, rows[0]["audio"], None, True, False)
        pixels = timed(times, "image decode (Pillow)", decode_image, image, cfg.image)
        timed(times, "image to tensor", image_to_tensor, pixels, cfg.image)
        wave = timed(times, "WAV decode (soundfile)", decode_audio, audio, cfg.audio)
        timed(times, "log-mel features", audio_features, wave, cfg.audio)
        samples = timed(times, "engine.encode (all of the above after parsing)", engine.encode, rows)
        timed(times, "collate", engine.predictor._collate, samples)
        outputs = timed(times, "engine.forward (collate + model)", engine.forward, [samples])
        timed(times, "answer formatting", engine.predictions, outputs[0])
    return times


async def through_app(model_dir: Path, engine: Engine, bodies: list[bytes], count: int) -> Times:
    """The same requests through the ASGI app: timestamps where the engine is entered and left."""
    marks: dict[str, float] = {}
    encode, forward, predictions = engine.encode, engine.forward, engine.predictions

    def mark(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any) -> Any:
            marks[f"{name} start"] = time.perf_counter()
            out = fn(*args)
            marks[f"{name} end"] = time.perf_counter()
            return out

        return wrapped

    engine.encode, engine.forward, engine.predictions = (  # type: ignore[method-assign]
        mark("decode", encode),
        mark("forward", forward),
        mark("format", predictions),
    )
    times: Times = {}
    app = create_app(model_dir, ServeSettings(), engine)
    try:
        async with app.router.lifespan_context(app):
            logging.getLogger(LOGGER).disabled = True  # the access log line is measured apart from this
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                for i in range(count):
                    sent = time.perf_counter()
                    response = await client.post(
                        "/v1/predict",
                        content=bodies[i % len(bodies)],
                        headers={"Content-Type": "application/json"},
                    )
                    done = time.perf_counter()
                    assert response.status_code == 200, response.text
                    for name, start, stop in (
                        ("client + app + parsing, to decoding", sent, marks["decode start"]),
                        ("decoding (engine.encode)", marks["decode start"], marks["decode end"]),
                        ("decoding to forward", marks["decode end"], marks["forward start"]),
                        ("forward (engine.forward)", marks["forward start"], marks["forward end"]),
                        ("answer formatting", marks["forward end"], marks["format end"]),
                        ("back to the loop, response, client", marks["format end"], done),
                        ("total", sent, done),
                    ):
                        times.setdefault(name, []).append((stop - start) * 1000)
    finally:
        engine.encode, engine.forward, engine.predictions = encode, forward, predictions  # type: ignore[method-assign]
        logging.getLogger(LOGGER).disabled = False
    return times


def table(title: str, times: Times) -> None:
    print(f"\n| {title} | p50 ms | mean ms |\n|---|---:|---:|")
    for name, values in times.items():
        kept = values[len(values) // 5 :]
        print(f"| {name} | {statistics.median(kept):.3f} | {statistics.fmean(kept):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "polyfuse-serve-load")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    table_path, model_dir, _ = trained_model(args.work, 1)
    bodies = request_bodies(table_path, 50)
    engine = Engine(model_dir, ServeSettings().limits)
    engine.warm_up()
    table("stage, called directly", stages(engine, bodies, args.requests))
    table("through the ASGI app", asyncio.run(through_app(model_dir, engine, bodies, args.requests)))


if __name__ == "__main__":
    main()
